"""Real MNIST digits turned into the kind of pictures people have: PNG or JPEG files of any
size, placed anywhere on the page, dark ink on light paper or the reverse, gray, RGB or RGBA.

Every variant keeps the digit's aspect ratio, as a scan or a photo does; what changes is
everything MNIST's normalisation is meant to undo.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _scaled(digit: np.ndarray, side: int) -> np.ndarray:
    """A (28, 28) float digit in [0, 1] resampled to side x side, still in [0, 1]."""
    image = Image.fromarray(digit.astype(np.float32)).resize((side, side),
                                                             Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def _on_page(ink: np.ndarray, page: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    """Place an ink map on a larger page (height, width) with its corner at `at`."""
    out = np.zeros(page, np.float32)
    out[at[0]:at[0] + ink.shape[0], at[1]:at[1] + ink.shape[1]] = ink
    return out


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def dark_ink_gray_png(digit: np.ndarray) -> bytes:
    """Pencil on white paper: 4x larger, off-centre on a wide page, 8-bit gray PNG."""
    ink = _on_page(_scaled(digit, 112), (180, 260), (40, 20))
    return _encode(Image.fromarray(np.uint8(255 * (1 - ink)), "L"), "PNG")


def blue_ink_on_cream_jpeg(digit: np.ndarray) -> bytes:
    """Blue pen on cream paper, 10x larger, bottom right of a photo, RGB JPEG."""
    ink = _on_page(_scaled(digit, 280), (420, 400), (130, 110))[..., None]
    paper, pen = np.array([245, 238, 220]), np.array([20, 40, 150])
    return _encode(Image.fromarray(np.uint8(paper * (1 - ink) + pen * ink), "RGB"), "JPEG")


def white_ink_on_black_small_png(digit: np.ndarray) -> bytes:
    """MNIST's own polarity but smaller than MNIST (20 px), in a corner of a 64x48 RGB PNG."""
    ink = _on_page(_scaled(digit, 20), (48, 64), (3, 4))
    return _encode(Image.fromarray(np.uint8(255 * ink), "L").convert("RGB"), "PNG")


def black_ink_on_transparent_png(digit: np.ndarray) -> bytes:
    """A drawing exported from a canvas: black strokes whose alpha is the ink, RGBA PNG."""
    ink = _on_page(_scaled(digit, 200), (300, 300), (60, 30))
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = np.uint8(255 * ink)
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


VARIANTS = {
    "dark ink, gray PNG, 112 px, off-centre": dark_ink_gray_png,
    "blue ink on cream, RGB JPEG, 280 px": blue_ink_on_cream_jpeg,
    "white ink on black, RGB PNG, 20 px, in a corner": white_ink_on_black_small_png,
    "black ink on transparent, RGBA PNG, 200 px": black_ink_on_transparent_png,
}
