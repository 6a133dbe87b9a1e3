"""MNIST comes from tfds, verified, flattened to 784 floats in [0, 1], split as configured."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitsjax.core.config import DataConfig
from digitsjax.core.data import mnist_from_raw
from digitsjax.errors import COMMAND_LINE, DataError
from digitsjax.run import mnist as run_mnist
from digitsjax.run.mnist import CACHE_NAME, MNIST_FILES, TFDS_NAME, TFDS_VERSION, load_mnist

from .conftest import genuine_checksums


def test_real_mnist_has_the_expected_shapes_dtypes_ranges_and_splits(mnist):
    assert mnist.train_images.shape == (55_000, 784)
    assert mnist.val_images.shape == (5_000, 784)
    assert mnist.test_images.shape == (10_000, 784)
    for images in (mnist.train_images, mnist.val_images, mnist.test_images):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (mnist.train_labels, mnist.val_labels, mnist.test_labels):
        assert labels.dtype == np.int32
        assert set(np.unique(labels)) == set(range(10))
    # MNIST digits are mostly background: about 19% of pixels carry ink.
    assert 0.1 < float((mnist.test_images > 0.5).mean()) < 0.3


def test_validation_size_moves_images_from_train_to_validation(mnist, mnist_dir):
    other = load_mnist(DataConfig(validation_size=10_000), mnist_dir)
    assert other.train_images.shape[0] == 50_000 and other.val_images.shape[0] == 10_000
    np.testing.assert_array_equal(other.train_images, mnist.train_images[:50_000])
    np.testing.assert_array_equal(other.val_images[5_000:], mnist.val_images)


def test_checksums_are_the_genuine_files_registered_by_tfds(mnist, mnist_dir):
    assert mnist.checksums["files_sha256"] == genuine_checksums(mnist_dir)
    assert mnist.checksums["tfds"] == f"{TFDS_NAME}/{TFDS_VERSION}"
    assert set(mnist.checksums["arrays_sha256"]) == {
        "train_images", "train_labels", "test_images", "test_labels"}


def test_cached_arrays_load_without_importing_tensorflow(mnist):
    code = ("import sys; from digitsjax.core.config import DataConfig; "
            "from digitsjax.run.mnist import load_mnist; d = load_mnist(DataConfig()); "
            "print(d.train_images.shape, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(55000, 784) False"


def test_raw_arrays_without_a_splits_registered_size_are_refused():
    """Pipelines count their steps from the registered sizes: other data is not MNIST."""
    def raw(n_train: int) -> dict[str, np.ndarray]:
        return {"train_images": np.zeros((n_train, 28, 28), np.uint8),
                "train_labels": np.zeros(n_train, np.uint8),
                "test_images": np.zeros((10_000, 28, 28), np.uint8),
                "test_labels": np.zeros(10_000, np.uint8)}
    assert mnist_from_raw(raw(60_000), {}, 5_000).val_images.shape == (5_000, 784)
    with pytest.raises(DataError, match="MNIST's train split has 59999 examples, not 60000"):
        mnist_from_raw(raw(59_999), {}, 5_000)


@pytest.fixture
def prepared_copy(tmp_path, mnist) -> Path:
    """A private copy of the prepared tfds dataset (without the array cache)."""
    source = run_mnist.resolve_tfds_data_dir(DataConfig()) / TFDS_NAME / TFDS_VERSION
    target = tmp_path / "tfds" / TFDS_NAME / TFDS_VERSION
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("digitsjax-arrays*"))
    return tmp_path / "tfds"


def test_a_corrupt_cache_is_ignored_and_rebuilt(prepared_copy, mnist):
    cache = prepared_copy / TFDS_NAME / TFDS_VERSION / CACHE_NAME
    cache.write_bytes(b"not an npz")
    config = DataConfig(tfds_data_dir=str(prepared_copy))
    rebuilt = load_mnist(config)
    np.testing.assert_array_equal(rebuilt.test_images, mnist.test_images)
    assert run_mnist._read_cache(cache) is not None  # rewritten intact


def flip_a_byte(cache: Path) -> None:
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the training images: their CRC no longer matches
    cache.write_bytes(bytes(data))


def cut_short(cache: Path) -> None:
    cache.write_bytes(cache.read_bytes()[:1_000_000])


def other_arrays(cache: Path) -> None:
    """A readable cache whose checksums match arrays that are not MNIST's splits."""
    arrays = {"train_images": np.zeros((10, 28, 28), np.uint8),
              "test_labels": np.zeros(10, np.int64)}
    with open(cache, "wb") as f:
        np.savez(f, **arrays)
    sidecar = cache.with_suffix(".json")
    checksums = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(checksums | {"arrays_sha256": run_mnist._arrays_sha256(arrays)}))


def damaged_copy(prepared_copy: Path, damage) -> Path:
    """The shipped array cache and its checksums, copied beside `prepared_copy`'s files and
    damaged."""
    shipped = run_mnist.resolve_tfds_data_dir(DataConfig()) / TFDS_NAME / TFDS_VERSION
    cache = prepared_copy / TFDS_NAME / TFDS_VERSION / CACHE_NAME
    for path in (cache, cache.with_suffix(".json")):
        shutil.copy(shipped / path.name, path)
    damage(cache)
    return cache


@pytest.mark.parametrize("damage", [flip_a_byte, cut_short, other_arrays])
def test_a_damaged_cache_is_not_used_and_said_in_one_line(prepared_copy, capsys, damage):
    cache = damaged_copy(prepared_copy, damage)
    capsys.readouterr()
    assert run_mnist._read_cache(cache, say_damage=True) is None
    notice = capsys.readouterr().err.splitlines()
    assert len(notice) == 1 and notice[0].startswith(
        f"digitsjax: the MNIST array cache {cache} is damaged ("), notice
    assert notice[0].endswith("); rebuilding it from tfds' prepared files")


def test_a_damaged_cache_is_rebuilt(prepared_copy, mnist, capsys):
    """The array cache is digitsjax's own file: whatever is wrong with it, it is rebuilt from
    tfds' prepared files, never an error that lasts until someone deletes it."""
    cache = damaged_copy(prepared_copy, flip_a_byte)
    rebuilt = load_mnist(DataConfig(tfds_data_dir=str(prepared_copy)))
    np.testing.assert_array_equal(rebuilt.train_images, mnist.train_images)
    assert "is damaged" in capsys.readouterr().err
    assert run_mnist._read_cache(cache) is not None  # rewritten intact


def test_offline_without_a_manual_dir_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mnist, "_online", lambda: False)
    monkeypatch.delenv(run_mnist.MNIST_DIR_ENV)
    with pytest.raises(DataError, match=r"cannot reach .* pass mnist_dir=DIR \(or "
                                        r"\$DIGITSJAX_MNIST_DIR=DIR\)") as error:
        load_mnist(DataConfig(tfds_data_dir=str(tmp_path)), None)
    assert "pass --mnist-dir DIR (or $DIGITSJAX_MNIST_DIR=DIR)" in \
        error.value.render(COMMAND_LINE)


def manual_dir_with(tmp_path: Path, mnist_dir: Path, mistake: str) -> Path:
    """A copy of the four MNIST files, less the first ("missing") or with the last one
    lengthened ("tampered")."""
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in MNIST_FILES:
        if not (mistake == "missing" and name == MNIST_FILES[0]):
            shutil.copy(mnist_dir / name, manual / name)
    if mistake == "tampered":
        with open(manual / MNIST_FILES[3], "ab") as f:
            f.write(b"tampered")
    return manual


def test_a_manual_dir_missing_a_file_names_it(tmp_path, mnist_dir):
    manual = manual_dir_with(tmp_path, mnist_dir, "missing")
    with pytest.raises(DataError, match=f"lacks {MNIST_FILES[0]}"):
        load_mnist(DataConfig(tfds_data_dir=str(tmp_path / "tfds")), manual)


def test_a_corrupt_mnist_file_is_caught_by_tfds_checksums(tmp_path, mnist_dir):
    manual = manual_dir_with(tmp_path, mnist_dir, "tampered")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz has the wrong sha256"):
        load_mnist(DataConfig(tfds_data_dir=str(tmp_path / "tfds")), manual)


def test_manual_dir_resolution_prefers_flag_then_env_then_pipeline(monkeypatch):
    config = DataConfig(mnist_dir="/from/pipeline")
    monkeypatch.setenv(run_mnist.MNIST_DIR_ENV, "/from/env")
    assert run_mnist.resolve_mnist_dir("/from/flag", config) == Path("/from/flag")
    assert run_mnist.resolve_mnist_dir(None, config) == Path("/from/env")
    monkeypatch.delenv(run_mnist.MNIST_DIR_ENV)
    assert run_mnist.resolve_mnist_dir(None, config) == Path("/from/pipeline")
    assert run_mnist.resolve_mnist_dir(None, DataConfig()) is None


FIND_MISTAKE = """
import sys
from pathlib import Path
from digitsjax.run import mnist as run_mnist
from digitsjax.errors import DataError
try:
    run_mnist.load_raw_arrays(Path(sys.argv[1]), Path(sys.argv[2]))
except DataError as e:
    print(e.problem)
print("tensorflow" if "tensorflow.python" in sys.modules else "no tensorflow")
"""


@pytest.mark.parametrize(("mistake", "problem"), [
    ("missing", f"lacks {MNIST_FILES[0]}"),
    ("tampered", f"{MNIST_FILES[3]} has the wrong sha256"),
    ("data dir under a file", "could not prepare MNIST in"),
])
def test_a_mistake_in_preparing_mnist_is_found_before_tensorflow_loads(tmp_path, mnist_dir,
                                                                       mistake, problem):
    """TensorFlow is slow to import: a wrong manual dir or data dir is said at once."""
    manual = manual_dir_with(tmp_path, mnist_dir, mistake)
    data_dir = tmp_path / "tfds"
    if mistake == "data dir under a file":
        (tmp_path / "a-file").write_text("")
        data_dir = tmp_path / "a-file" / "tfds"
    found = subprocess.run([sys.executable, "-c", FIND_MISTAKE, str(data_dir), str(manual)],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert any(problem in line for line in found), found
    assert found[-1] == "no tensorflow"


PREPARE = """
import sys
from pathlib import Path
from digitsjax.run import mnist as run_mnist
arrays, checksums = run_mnist.load_raw_arrays(Path(sys.argv[1]), Path(sys.argv[2]))
print(checksums["arrays_sha256"]["test_images"])
"""


def test_two_processes_preparing_mnist_at_once_both_get_it(tmp_path, mnist_dir, mnist):
    """tfds renames its finished folder into place: a second preparer would fail on it. What
    tfds says while preparing goes to stderr: stdout is a command's answer."""
    data_dir = tmp_path / "tfds"
    runs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(data_dir), str(mnist_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-500:] for _, err in results]
    assert results[0][0] == results[1][0] == \
        mnist.checksums["arrays_sha256"]["test_images"] + "\n"
