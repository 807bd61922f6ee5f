"""The browser demo (``page4d demo``): gradio around ``page4d reconstruct`` and the viser viewer."""
