"""MNIST's normalisation, applied to pictures: what `predict` and `serve` feed the network."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitsjax.apps import imaging
from digitsjax.apps.imaging import (
    BOX,
    CENTRE,
    FIELD,
    decode_image,
    load_digit,
    load_digit_files,
    normalize_digit,
)
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


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of about 100 bytes whose header declares width x height pixels: a decompression
    bomb (its pixel data is a few zeros; a decoder that trusted the header would allocate for
    all of them)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def jpeg_with_corrupt_exif() -> bytes:
    """A JPEG whose EXIF block says it holds 5 tags and ends inside the second: Pillow warns
    (`Corrupt EXIF data`) when it reads the orientation, and reads on."""
    buffer = io.BytesIO()
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00" + b"\xff" * 20
    Image.new("L", (30, 30), 200).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (20_000, 20_000)],
                         ids=["trips Pillow's warning", "over Pillow's error limit"])
def test_a_decompression_bomb_is_an_image_error_never_a_warning(width, height):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=r"^bomb\.png .*pixels.*; scale it down first$"):
            decode_image(png_declaring(width, height), "bomb.png")
    assert caught == []


def test_a_warning_while_decoding_is_the_image_error_and_stays_in_the_decode():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        with pytest.raises(ImageError, match=r"^exif\.jpg is a damaged .*Corrupt EXIF data"):
            decode_image(jpeg_with_corrupt_exif(), "exif.jpg")
        assert warnings.filters == filters  # scoped to the decode, not the process
    assert caught == []


def test_decoding_in_many_threads_leaves_the_warning_filters_as_they_were():
    """`serve` decodes in several threads at once. The warning filters are one list for the
    whole process: scopes entered and left out of order would leave one thread's filter
    installed for every thread after it."""
    filters, refused = list(warnings.filters), []

    def decode() -> None:
        for _ in range(250):
            try:
                decode_image(jpeg_with_corrupt_exif(), "exif.jpg")
            except ImageError:
                refused.append(1)

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == filters
    assert len(refused) == 8 * 250


def test_bytes_over_the_limit_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_IMAGE_BYTES", 1000)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 1000
    with pytest.raises(ImageError, match=r"^upload\.png is larger than 1,000 bytes, the limit"):
        decode_image(buffer.getvalue(), "upload.png")


def test_each_file_is_its_digit_or_an_error_naming_it(tmp_path, digits):
    """One bad file costs the others nothing: each path gives its digit or its own error."""
    seven = tmp_path / "seven.png"
    seven.write_bytes(dark_ink_gray_png(digits[0][0]))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    fifo = tmp_path / "pipe.png"  # opening it for reading would wait for a writer forever
    os.mkfifo(fifo)
    paths = [seven, notes, folder, fifo, tmp_path / "missing.png", seven]
    results = load_digit_files(paths)
    assert len(results) == len(paths)
    for path, result in zip(paths, results, strict=True):
        if path == seven:
            assert np.array_equal(result, load_digit(seven.read_bytes()))
        else:
            assert isinstance(result, ImageError), path
            assert str(result).startswith(f"{path} ") and "\n" not in str(result)


def test_a_file_is_read_up_to_the_limit_only(monkeypatch, tmp_path):
    """/dev/zero never ends; a file over the limit is refused without being read whole."""
    monkeypatch.setattr(imaging, "MAX_IMAGE_BYTES", 1000)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    paths = [Path("/dev/zero"), big]
    for path, result in zip(paths, load_digit_files(paths), strict=True):
        assert isinstance(result, ImageError)
        assert str(result).startswith(f"{path} is larger than 1,000 bytes, the limit")
