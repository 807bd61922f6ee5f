"""The one place page4d opens raster files: RGB images for the model, raw depth maps, boolean masks, header sizes.

Every reader applies the EXIF orientation (``PIL.ImageOps.exif_transpose``) and every size is the *oriented*
(H, W), so orientations 5-8 swap width and height. PIL's ``DecompressionBombWarning`` is silenced here: callers
report a large clip once with :func:`check_pixel_count`, and a file above PIL's error limit
(``2 * Image.MAX_IMAGE_PIXELS``) raises ``ValueError``. Every failure is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

ImageSource = str | Path | Image.Image
WHITE = 255
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
"""Greyscale modes PIL opens 16-bit PNGs in (``I`` is 32-bit but holds 16-bit values there)."""
DEPTH_MODES = SIXTEEN_BIT_MODES | {"L"}
SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that transpose the stored image, so its width and height swap."""
NON_COLOUR_BANDS = frozenset({"A", "a", "X"})
"""Alpha (straight, premultiplied) and padding bands, which say nothing about what a mask marks."""


def _too_large(name: str, size: str) -> str:
    limit = 2 * Image.MAX_IMAGE_PIXELS
    return (
        f"{name} is {size}, above the limit of {limit:,} pixels (twice PIL.Image.MAX_IMAGE_PIXELS) that page4d "
        "decodes; downscale it first"
    )


def _describe(height: int, width: int) -> str:
    return f"{width}x{height} ({width * height / 1e6:.1f} Mpx)"


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` without PIL's bomb warning; failures in the ``with`` body are named too (verify, load)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found; check the path") from None
    except Image.DecompressionBombError as err:
        # PIL refuses before the header is exposed, so the pixel count is only in its message
        count = re.match(r"Image size \((\d+) pixels\)", str(err))
        raise ValueError(_too_large(str(path), f"{int(count.group(1)):,} pixels" if count else "too large")) from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read the image ({err}); replace or re-export the file") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = as stored) that ``exif_transpose`` applies, from the header."""
    # PNG's own getexif() decodes the whole image to look for a trailing eXIf chunk; the header's one is enough
    return Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1)


def _check_not_empty(height: int, width: int, name: str) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"{name}: the image is empty ({width}x{height}); replace the file")


def oriented_size(source: ImageSource) -> tuple[int, int]:
    """(H, W) of ``source`` as the readers return it (EXIF orientation applied), without decoding the pixels.

    For files, ``verify`` also catches truncated or corrupt PNGs."""
    if isinstance(source, Image.Image):
        (width, height), orientation, name = source.size, _orientation(source), "the in-memory image"
    else:
        with _opened(source) as img:
            (width, height), orientation, name = img.size, _orientation(img), str(source)
            img.verify()
    _check_not_empty(height, width, name)
    return (width, height) if orientation in SWAPPED_ORIENTATIONS else (height, width)


def check_pixel_count(size: tuple[int, int], name: str) -> None:
    """Warn once per call (callers: once per clip) if (H, W) ``size`` of ``name`` is above PIL's bomb threshold.

    Raises above twice the threshold: file readers already do, this covers in-memory frames (videos)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    height, width = size
    if height * width > 2 * limit:
        raise ValueError(_too_large(name, _describe(height, width)))
    if height * width > limit:
        warnings.warn(
            f"{name} is {_describe(height, width)}, above PIL's decompression-bomb threshold of {limit:,} pixels; "
            "every frame is read at full size and downscaled to the model input",
            UserWarning,
            stacklevel=3,
        )


def _decode(source: ImageSource) -> tuple[Image.Image, str]:
    """The pixels of ``source`` with the EXIF orientation applied, and its name for messages."""
    if isinstance(source, Image.Image):
        img, name = ImageOps.exif_transpose(source), "the in-memory image"
    else:
        with _opened(source) as opened:
            img, name = ImageOps.exif_transpose(opened), str(source)
    _check_not_empty(img.height, img.width, name)
    return img, name


def _sixteen_to_eight_bits(img: Image.Image, name: str) -> Image.Image:
    """16-bit grey -> 8-bit grey over the full range, ``round(v / 257)`` (257 = 65535 / 255)."""
    values = np.asarray(img)
    if img.mode == "I" and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{name}: 32-bit image with values outside 0..65535; export it as an 8- or 16-bit image")
    return Image.fromarray(np.rint(values / 257).astype(np.uint8))


def load_rgb(source: ImageSource) -> Image.Image:
    """Open an image as 8-bit RGB for the model: EXIF orientation applied, RGBA composited on white, 16-bit grey
    scaled to 8 bits. Raises ``ValueError`` naming the file if unusable."""
    img, name = _decode(source)
    if img.mode in SIXTEEN_BIT_MODES:
        img = _sixteen_to_eight_bits(img, name)
    elif img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (WHITE,) * 4), img)
    return img.convert("RGB")


def read_depth(path: str | Path) -> np.ndarray:
    """Depth ``[H, W]`` exactly as stored (uint16 for 16-bit PNGs, never rescaled), EXIF orientation applied."""
    img, name = _decode(path)
    if img.mode not in DEPTH_MODES:
        raise ValueError(f"{name}: depth must be a single-channel image, got mode {img.mode}; save depth as a "
                         "16-bit greyscale PNG")
    return np.asarray(img)


def read_mask(path: str | Path) -> np.ndarray:
    """Mask ``[H, W]`` bool, True = moving: non-zero grey / 16-bit value / palette index, or any non-zero colour
    channel; alpha is ignored. EXIF orientation applied."""
    img, _ = _decode(path)
    values = np.asarray(img)
    if values.ndim == 2:
        return values != 0
    colour = [i for i, band in enumerate(img.getbands()) if band not in NON_COLOUR_BANDS]
    return (values[..., colour] != 0).any(axis=-1)
