"""Any picture of a digit -> the 28x28 image an MNIST network expects.

MNIST's digits were made this way (LeCun et al.): white ink on black, the ink's bounding box
scaled so that its longer side is 20 px (aspect ratio kept, anti-aliased), then placed in a
28x28 field so that the ink's centre of mass sits at the centre. A network trained on MNIST has
only ever seen images made like that, so `predict` and `serve` put every picture through the
same steps; a photo of dark ink on light paper works as well as white ink on black.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitsjax.errors import ImageError

FIELD = 28
"""MNIST's image side."""
BOX = 20
"""The side of the box MNIST fits each digit's ink into."""
CENTRE = 14.0
"""Where MNIST's centres of mass sit, in pixel indices (measured on the test set: 14.0 +- 0.3)."""
INK_THRESHOLD = 0.2
"""Ink weaker than this fraction of the strongest ink counts as paper (JPEG noise, shading)."""
MIN_CONTRAST = 0.1
"""An image whose ink differs from its paper by less than this (of full scale) is blank."""
MAX_PIXELS = 40_000_000
"""Refuse larger images before decoding them: a small PNG can inflate to gigabytes."""
FORMATS = ("PNG", "JPEG")


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """PNG or JPEG bytes -> grayscale float32 (H, W) in [0, 1], 1 = white, alpha flattened."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise ImageError(f"{name} is {image.width}x{image.height} pixels, more than "
                                 f"{max_pixels:,}; scale it down first")
            image.load()
            return _grayscale(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not a PNG or JPEG image; use a PNG or JPEG") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name} is a damaged or unsupported image ({e}); "
                         "re-save it as PNG or JPEG") from None


def _grayscale(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1]. Transparent pixels become paper of the colour opposite the ink."""
    if image.mode.startswith("I;16"):  # 16-bit grayscale PNG: keep its precision
        return np.asarray(image, dtype=np.float32) / 65535.0
    if "A" not in image.getbands() and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    luminance, alpha = (np.asarray(band, dtype=np.float32) / 255.0
                        for band in image.convert("LA").split())
    if alpha.min() == 1.0:
        return luminance
    # A drawing exported on a transparent canvas: what is opaque is the ink. Put it on paper
    # that contrasts with it, so that the polarity test below sees ink on paper.
    ink = float(np.average(luminance, weights=alpha)) if alpha.sum() > 0 else 0.0
    paper = 1.0 if ink < 0.5 else 0.0
    return luminance * alpha + paper * (1.0 - alpha)


def normalize_digit(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) in [0, 1] -> MNIST's (28, 28) float32: white ink on black, fitted in a
    20x20 box and centred by its centre of mass."""
    paper = float(np.median(gray))  # a digit covers well under half of its picture
    # Polarity: light paper means dark ink, which MNIST stores inverted (ink 1, paper 0).
    ink = np.clip(gray - paper if paper < 0.5 else paper - gray, 0.0, None)
    strongest = float(ink.max())
    if strongest < MIN_CONTRAST:
        raise ImageError("the image is blank: no ink stands out from the paper; "
                         "draw or photograph a digit")
    ink = ink / strongest
    ink[ink < INK_THRESHOLD] = 0.0
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return _centre_by_mass(_fit_box(crop))


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longer side is BOX px, anti-aliased, keeping the aspect ratio."""
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(
        size, Image.Resampling.LANCZOS))
    resized = np.clip(resized, 0.0, None)  # Lanczos rings slightly below zero
    return np.clip(resized / resized.max(), 0.0, 1.0)  # MNIST's strokes reach full white


def _centre_by_mass(box: np.ndarray) -> np.ndarray:
    """Place `box` in a 28x28 field with its centre of mass on MNIST's centre (whole pixels)."""
    height, width = box.shape
    total = box.sum()
    row = (box.sum(axis=1) @ np.arange(height)) / total
    col = (box.sum(axis=0) @ np.arange(width)) / total
    top = int(np.clip(round(CENTRE - row), 0, FIELD - height))
    left = int(np.clip(round(CENTRE - col), 0, FIELD - width))
    field = np.zeros((FIELD, FIELD), np.float32)
    field[top:top + height, left:left + width] = box
    return field


def load_digit(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """PNG or JPEG bytes -> the (28, 28) float32 image the network sees."""
    return normalize_digit(decode_image(data, name, max_pixels))


def load_digit_files(paths: Sequence[Path]) -> np.ndarray:
    """Image files -> (N, 28, 28); every file is read before any network is loaded."""
    return np.stack([load_digit(_read(Path(path)), str(path)) for path in paths])


def _read(path: Path) -> bytes:
    fix = "pass the path of a PNG or JPEG file"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image {path} not found; {fix}") from None
    except IsADirectoryError:
        raise ImageError(f"image {path} is a folder; {fix}") from None
    except OSError as e:
        raise ImageError(f"cannot read image {path} ({e.strerror}); check its permissions, or "
                         f"{fix}") from None
