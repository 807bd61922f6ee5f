"""Looking at reconstructions: a browser 4D viewer (PNG image panels are an export, :mod:`page4d.export.panels`)."""
