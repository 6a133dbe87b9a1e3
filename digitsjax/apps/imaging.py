"""Any picture of a digit -> the 28x28 image an MNIST network expects.

MNIST's digits were made this way (LeCun et al.): white ink on black, the ink's bounding box
scaled so that its longer side is 20 px (aspect ratio kept, anti-aliased), then placed in a
28x28 field so that the ink's centre of mass sits at the centre. A network trained on MNIST has
only ever seen images made like that, so `predict` and `serve` put every picture through the
same steps; a photo of dark ink on light paper works as well as white ink on black.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
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
"""Where MNIST's digits have their centre of mass, in pixel indices, on both axes: the test
set's mean (`python bench/image_limits.py`; docs/performance.md)."""
INK_THRESHOLD = 0.2
"""Ink weaker than this fraction of the strongest ink counts as paper (JPEG noise, shading)."""
MIN_CONTRAST = 0.1
"""An image whose ink differs from its paper by less than this (of full scale) is blank."""
MAX_PIXELS = 40_000_000
"""Refuse larger images before decoding them: a small PNG can decode to more pixels than
memory holds."""
MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""The most bytes an image may have, read from a file (`predict`) or posted (`serve`): room for
a high-resolution camera's JPEG, and past what MAX_PIXELS lets a PNG decode to. Files are read
only this far, so /dev/zero or a file still growing is refused rather than read until memory
runs out; `serve`'s bodies are far smaller by default (`serve.MAX_BODY_BYTES`), and the same
limit holds for the image inside one however large the server's body limit is set."""
FORMATS = ("PNG", "JPEG")
_DECODING = threading.Lock()
"""Held while Pillow decodes with its warnings turned into errors: the warning filters are one
list for the whole process, and `serve` decodes in several threads; scopes entered and left out
of order would leave one thread's filter installed for every other thread."""


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """PNG or JPEG bytes -> grayscale float32 (H, W) in [0, 1], 1 = white, alpha flattened.

    Pillow's warnings (a decompression bomb, corrupt EXIF data) become this image's
    `ImageError`: a one-line error naming it, never a warning printed by the process.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(name)
    try:
        with _DECODING, warnings.catch_warnings():
            warnings.simplefilter("error")
            return _decode(data, name, max_pixels)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not a PNG or JPEG image", "use a PNG or JPEG") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} declares more pixels than can be decoded safely "
                         f"({str(e).rstrip('.')})", "scale it down first") from None
    except (OSError, ValueError, SyntaxError, EOFError, Warning) as e:
        raise ImageError(f"{name} is a damaged or unsupported image ({e})",
                         "re-save it as PNG or JPEG") from None


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Open, check the declared size, decode: the steps whose errors `decode_image` names."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        if image.width * image.height > max_pixels:
            raise ImageError(f"{name} is {image.width}x{image.height} pixels, more than "
                             f"{max_pixels:,}", "scale it down first")
        image.load()
        return _grayscale(ImageOps.exif_transpose(image))


def _too_large(name: str) -> ImageError:
    return ImageError(f"{name} is larger than {MAX_IMAGE_BYTES:,} bytes, the limit for an image",
                      "scale it down or save it as JPEG")


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


def normalize_digit(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """Grayscale (H, W) in [0, 1] -> MNIST's (28, 28) float32: white ink on black, fitted in a
    20x20 box and centred by its centre of mass. `name` names the picture in its error."""
    paper = float(np.median(gray))  # a digit covers well under half of its picture
    # Polarity: light paper means dark ink, which MNIST stores inverted (ink 1, paper 0).
    ink = np.clip(gray - paper if paper < 0.5 else paper - gray, 0.0, None)
    strongest = float(ink.max())
    if strongest < MIN_CONTRAST:
        raise ImageError(f"{name} shows no digit: the image is blank, no ink stands out from "
                         "the paper", "draw or photograph a digit")
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
    return normalize_digit(decode_image(data, name, max_pixels), name)


def load_digit_files(paths: Sequence[str | Path]) -> list[np.ndarray | ImageError]:
    """Image files -> each one's (28, 28) digit, or the `ImageError` naming what is wrong with
    it: one bad file among many must not cost the others their answers."""
    digits: list[np.ndarray | ImageError] = []
    for path in paths:
        try:
            digits.append(load_digit(_read(Path(path)), str(path)))
        except ImageError as e:
            digits.append(e)
    return digits


_FIX_PATH = "pass the path of a PNG or JPEG file"


def _read(path: Path) -> bytes:
    """A file's bytes, at most MAX_IMAGE_BYTES + 1 of them (one more tells a file over the
    limit). Opened non-blocking, so that a FIFO without a writer is refused, not waited on."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError(f"{path} not found", _FIX_PATH) from None
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        _refuse_what_is_no_image_file(path, os.fstat(descriptor))
        with open(descriptor, "rb", buffering=0, closefd=False) as file:
            data = _read_at_most(file, MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise _unreadable(path, e) from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_IMAGE_BYTES:  # /dev/zero, or a file that grew while it was read
        raise _too_large(str(path))
    return data


def _refuse_what_is_no_image_file(path: Path, info: os.stat_result) -> None:
    """Folders, pipes and sockets hold no image (a pipe may never end); a regular file over
    the limit is refused before it is read. Devices report no size: they are read, bounded."""
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path} is a folder, not an image file", _FIX_PATH)
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        kind = "a pipe" if stat.S_ISFIFO(info.st_mode) else "a socket"
        raise ImageError(f"{path} is {kind}, not a regular file", _FIX_PATH)
    if info.st_size > MAX_IMAGE_BYTES:
        raise _too_large(str(path))


def _read_at_most(file: io.RawIOBase, limit: int) -> bytes:
    """Up to `limit` bytes, however few each read returns; stops at the end of the data."""
    chunks, size = [], 0
    while size < limit and (chunk := file.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _unreadable(path: Path, error: OSError) -> ImageError:
    return ImageError(f"{path} is unreadable: cannot read image ({error.strerror})",
                      f"check its permissions, or {_FIX_PATH}")
