"""MNIST's normalisation, applied to pictures: what `predict` and `serve` feed the network."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digitsjax.apps import imaging
from digitsjax.apps.imaging import BOX, CENTRE, FIELD, decode_image, load_digit, normalize_digit
from digitsjax.errors import ImageError, UserError

from .digit_pictures import VARIANTS, dark_ink_gray_png


@pytest.fixture(scope="module")
def digits(mnist) -> tuple[np.ndarray, np.ndarray]:
    """The first 100 real test digits as (100, 28, 28) images, with their labels."""
    return mnist.test_images[:100].reshape(-1, FIELD, FIELD), mnist.test_labels[:100]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_an_mnist_digit_is_already_normalised(digits):
    images, _ = digits
    similarity = [correlation(normalize_digit(image), image) for image in images]
    assert np.median(similarity) > 0.98
    assert np.mean(similarity) > 0.95


def test_normalised_digits_have_mnist_geometry(digits):
    for image in digits[0][:20]:
        picture = decode_image(dark_ink_gray_png(image))
        out = normalize_digit(picture)
        assert out.shape == (FIELD, FIELD) and out.dtype == np.float32
        assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
        rows, cols = np.nonzero(out)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 == BOX  # the longer side fills the box
        rows_mass, cols_mass = out.sum(axis=1), out.sum(axis=0)
        assert rows_mass @ np.arange(FIELD) / out.sum() == pytest.approx(CENTRE, abs=0.5)
        assert cols_mass @ np.arange(FIELD) / out.sum() == pytest.approx(CENTRE, abs=0.5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_any_size_offset_polarity_and_colour_gives_back_the_mnist_digit(digits, variant):
    images, _ = digits
    similarity = [correlation(load_digit(VARIANTS[variant](image)), normalize_digit(image))
                  for image in images[:30]]
    assert np.median(similarity) > 0.9, similarity


def test_transparent_canvas_with_light_ink_reads_as_ink(digits):
    image = digits[0][0]
    rgba = np.zeros((*image.shape, 4), np.uint8)
    rgba[..., :3] = 255  # white strokes on a transparent canvas
    rgba[..., 3] = np.uint8(255 * image)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    assert correlation(load_digit(buffer.getvalue()), normalize_digit(image)) > 0.95


def test_sixteen_bit_png_keeps_its_ink(digits):
    image = digits[0][1]
    buffer = io.BytesIO()
    Image.fromarray(np.uint16(65535 * (1 - image))).save(buffer, "PNG")
    assert correlation(load_digit(buffer.getvalue()), normalize_digit(image)) > 0.95


def test_a_blank_page_is_refused():
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 230).save(buffer, "PNG")
    with pytest.raises(ImageError, match="blank"):
        load_digit(buffer.getvalue())


@pytest.mark.parametrize("data, message", [
    (b"not an image at all", "not a PNG or JPEG"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "damaged|not a PNG"),
])
def test_bytes_that_are_no_png_or_jpeg_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data, "upload.png")


def test_other_formats_are_refused_not_guessed():
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "GIF")
    with pytest.raises(ImageError, match=r"upload\.gif is not a PNG or JPEG"):
        decode_image(buffer.getvalue(), "upload.gif")


def test_huge_images_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100)
    buffer = io.BytesIO()
    Image.new("L", (20, 10)).save(buffer, "PNG")
    with pytest.raises(ImageError, match="20x10 pixels"):
        decode_image(buffer.getvalue(), "big.png")


def test_image_errors_are_user_errors():
    assert issubclass(ImageError, UserError)
