"""Fuzzing the image decoder: any bytes are MNIST's 28x28 image in [0, 1] or an ImageError.

`predict` reads files and `serve` reads uploads through `imaging.load_digit`; whatever a user or
a client sends (random bytes, a cut-off download, a flipped bit, an odd pixel mode) must end
there in one of those two outcomes, never in another exception or a warning.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from digitsjax.apps.imaging import FIELD, load_digit
from digitsjax.errors import ImageError

FUZZ = settings(max_examples=500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
# A warning is an outcome too: Pillow's (a damaged EXIF block, a decompression bomb) must become
# the image's ImageError inside the decoder, never reach the caller.
pytestmark = pytest.mark.filterwarnings("error")


def digit_picture(mode: str, size: tuple[int, int], fmt: str, **options) -> bytes:
    """A dark diagonal stroke on light paper, in any PIL mode, encoded as PNG or JPEG."""
    width, height = size
    paper = np.full((height, width), 230, np.uint8)
    for y in range(height):  # a stroke from top-right to bottom-left, a few pixels thick
        x = int((width - 1) * (1 - y / max(1, height - 1)))
        paper[y, max(0, x - 2):x + 3] = 20
    image = Image.fromarray(paper, "L")
    if mode == "I;16":
        image = Image.fromarray(paper.astype(np.uint16) * 257)
    elif mode == "P":
        image = image.convert("RGB").quantize(8)
        image.info["transparency"] = 0
    elif mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


ROTATED_90 = Image.Exif()
ROTATED_90[0x0112] = 6  # EXIF orientation, as phone cameras write it


# Real files of every kind the decoder meets: the seeds that mutations start from.
SEEDS = [
    digit_picture("L", (40, 56), "PNG"),
    digit_picture("RGB", (64, 48), "PNG", optimize=True),
    digit_picture("RGBA", (30, 30), "PNG"),
    digit_picture("LA", (33, 21), "PNG"),
    digit_picture("P", (50, 50), "PNG"),
    digit_picture("1", (45, 60), "PNG"),
    digit_picture("I;16", (28, 28), "PNG"),
    digit_picture("L", (64, 64), "PNG", compress_level=9),
    digit_picture("L", (80, 60), "JPEG", quality=90),
    digit_picture("RGB", (60, 80), "JPEG", progressive=True),
    digit_picture("CMYK", (48, 48), "JPEG"),
    digit_picture("RGB", (70, 50), "JPEG", exif=ROTATED_90),
]
# Every pixel mode each format can store (JPEG has no alpha, palette or 16-bit gray).
KINDS = [*((mode, "PNG") for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")),
         *((mode, "JPEG") for mode in ("L", "RGB", "CMYK"))]


def ends_in_a_digit_or_an_image_error(data: bytes) -> None:
    try:
        digit = load_digit(data, "fuzz.png")
    except ImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert digit.shape == (FIELD, FIELD) and digit.dtype == np.float32
    assert np.isfinite(digit).all()
    assert digit.min() >= 0.0 and digit.max() <= 1.0


def test_every_seed_is_a_digit():
    """The mutations below start from files that decode: the property is not vacuous."""
    for seed in SEEDS:
        digit = load_digit(seed)
        assert digit.shape == (FIELD, FIELD) and digit.max() == np.float32(1.0)


@FUZZ
@given(st.sampled_from([b"", PNG_MAGIC, JPEG_MAGIC]), st.binary(max_size=2000))
def test_arbitrary_bytes(magic, tail):
    ends_in_a_digit_or_an_image_error(magic + tail)


@FUZZ
@given(st.sampled_from(SEEDS), st.floats(0.0, 1.0))
def test_truncated_files(seed, fraction):
    ends_in_a_digit_or_an_image_error(seed[:int(len(seed) * fraction)])


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True),
                                                  st.integers(0, 7)), min_size=1, max_size=8))
def test_flipped_bits(seed, flips):
    data = bytearray(seed)
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    ends_in_a_digit_or_an_image_error(bytes(data))


@FUZZ
@given(st.sampled_from(SEEDS), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=64),
       st.integers(0, 64))
def test_spliced_bytes(seed, fraction, inserted, deleted):
    """Bytes inserted at one place and others deleted after it: a damaged transfer."""
    at = int(len(seed) * fraction)
    ends_in_a_digit_or_an_image_error(seed[:at] + inserted + seed[at + deleted:])


@FUZZ
@given(st.sampled_from(KINDS), st.integers(1, 200), st.integers(1, 200),
       st.integers(0, 2**32 - 1))
def test_any_size_mode_and_content(kind, width, height, seed):
    """Valid files with random pixels, including 1x1, 1-pixel-wide and blank ones."""
    mode, fmt = kind
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), np.uint8)
    if seed % 3 == 0:
        pixels[:] = pixels[0, 0]  # a uniform picture: blank, must be refused as such
    image = Image.fromarray(pixels, "L")
    image = (Image.fromarray(pixels.astype(np.uint16) * 257) if mode == "I;16"
             else image.convert(mode))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    ends_in_a_digit_or_an_image_error(buffer.getvalue())
