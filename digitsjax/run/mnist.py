"""MNIST's files: tfds prepares them, an array cache keeps them, `load_mnist` reads them.

tfds prepares the dataset once (downloading it, or reading the four IDX files from a manual
download dir on air-gapped hosts, verifying their registered sha256 either way). We then decode
both splits once and cache the raw uint8 arrays next to tfds' own files, with their sha256, so
later runs load them without importing TensorFlow at all.

Everything here touches the outside world (files, a lock, a network probe, the environment,
TensorFlow), which is why it is run's and not core's: `core.data` holds what MNIST is (its
sizes, the `MNIST` arrays) and the pure step from the raw arrays to them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitsjax.core.data import IMAGE_SIDE, MNIST, SPLIT_SIZES, mnist_from_raw
from digitsjax.errors import MNIST_DIR, DataError
from digitsjax.files import write_atomic, write_json_atomic

if TYPE_CHECKING:
    from digitsjax.core.config import DataConfig

TFDS_NAME = "mnist"
TFDS_VERSION = "3.0.1"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_DIR_ENV = "DIGITSJAX_MNIST_DIR"
CACHE_NAME = "digitsjax-arrays.npz"
PREPARE_LOCK = ".digitsjax-prepare.lock"
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_MANUAL_DIR_FIX = f"pass {MNIST_DIR}, a folder holding the four MNIST files " \
                  f"({', '.join(MNIST_FILES)})"


def resolve_mnist_dir(flag: str | Path | None, config: DataConfig) -> Path | None:
    """The manual download dir: the CLI flag, else $DIGITSJAX_MNIST_DIR, else the pipeline."""
    for candidate in (flag, os.environ.get(MNIST_DIR_ENV), config.mnist_dir):
        if candidate:
            return Path(candidate).expanduser()
    return None


def resolve_tfds_data_dir(config: DataConfig) -> Path:
    """tfds' data dir: the pipeline's, else $TFDS_DATA_DIR, else tfds' default."""
    chosen = config.tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(chosen).expanduser()


def load_mnist(config: DataConfig, mnist_dir: str | Path | None = None) -> MNIST:
    """Load MNIST, preparing it with tfds first if needed; hold out the validation split.

    `mnist_dir` (the CLI's flag) is where tfds finds the IDX files; without it,
    $DIGITSJAX_MNIST_DIR, then the pipeline's `data.mnist_dir` (see `resolve_mnist_dir`).
    """
    arrays, checksums = load_raw_arrays(resolve_tfds_data_dir(config),
                                        resolve_mnist_dir(mnist_dir, config))
    return mnist_from_raw(arrays, checksums, config.validation_size)


def load_raw_arrays(data_dir: Path, mnist_dir: Path | None) -> tuple[dict[str, np.ndarray], dict]:
    """uint8 images (N, 28, 28) and labels (N,) for both splits, from the cache or from tfds."""
    cache = data_dir / TFDS_NAME / TFDS_VERSION / CACHE_NAME
    cached = _read_cache(cache, say_damage=True)
    if cached is not None:
        return cached
    with _one_preparer(data_dir):
        cached = _read_cache(cache)  # another process may have prepared it meanwhile
        if cached is not None:
            return cached
        arrays, registered = _decode_with_tfds(data_dir, mnist_dir)
        checksums = {"tfds": f"{TFDS_NAME}/{TFDS_VERSION}", "files_sha256": registered,
                     "arrays_sha256": _arrays_sha256(arrays)}
        _write_cache(cache, arrays, checksums)
    return arrays, checksums


@contextmanager
def _one_preparer(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir`'s preparation lock, waiting while another process prepares MNIST there.

    tfds prepares into a folder of its own and renames it into place: a second process
    preparing at the same time fails on that rename. `flock` ends with its holder, however it
    ends. Where no lock file can be made, nothing can be prepared either, and preparing says
    why in one line.
    """
    try:
        (data_dir / TFDS_NAME).mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / TFDS_NAME / PREPARE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            for name, a in sorted(arrays.items())}


def _read_cache(cache: Path, say_damage: bool = False) -> tuple[dict[str, np.ndarray],
                                                                 dict] | None:
    """The cached arrays if present and intact, else None: the caller then rebuilds the cache.

    The cache is digitsjax's own file, derived from tfds' prepared files, so whatever is wrong
    with it (a flipped byte, a cut-short file, arrays its checksums or MNIST's shapes disown)
    costs a rebuild, said in one line where `say_damage`, and never an error that lasts until
    someone deletes it.
    """
    try:
        return _cached_arrays(cache)
    except Exception as e:  # any way a damaged zip or array fails to read: rebuild it
        if say_damage and os.path.isfile(cache):  # else not made (or not fully) yet
            reason = " ".join(str(e).split())  # one line, whatever the error says
            reason = reason if len(reason) <= 200 else f"{reason[:200]}..."
            print(f"digitsjax: the MNIST array cache {cache} is damaged "
                  f"({type(e).__name__}: {reason}); rebuilding it from tfds' prepared files",
                  file=sys.stderr)
        return None


def _cached_arrays(cache: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The cache's arrays and checksums; raises if they are not MNIST's raw arrays intact."""
    checksums = json.loads(cache.with_suffix(".json").read_text())
    with np.load(cache) as npz:
        arrays = {name: npz[name] for name in npz.files}
    expected = {f"{split}_{kind}": (size, *shape) for split, size in SPLIT_SIZES.items()
                for kind, shape in (("images", (IMAGE_SIDE, IMAGE_SIDE)), ("labels", ()))}
    if {name: a.shape for name, a in arrays.items() if a.dtype == np.uint8} != expected:
        shapes = ", ".join(f"{name} {a.dtype} {a.shape}" for name, a in arrays.items())
        raise ValueError(f"it holds other arrays than MNIST's splits ({shapes})")
    if _arrays_sha256(arrays) != checksums["arrays_sha256"]:
        raise ValueError("its arrays do not match their recorded sha256")
    return arrays, checksums


def _write_cache(cache: Path, arrays: dict[str, np.ndarray], checksums: dict) -> None:
    """Arrays before their checksums, each atomically: a crash never leaves a half-written cache."""
    try:
        write_atomic(cache, lambda f: np.savez(f, **arrays))
        write_json_atomic(cache.with_suffix(".json"), checksums)
    except OSError:
        pass  # a read-only data dir only costs the speed-up


def _decode_with_tfds(data_dir: Path, mnist_dir: Path | None) -> tuple[dict, dict[str, str]]:
    """Prepare MNIST with tfds if it has not, then decode both splits.

    tfds finds the builder, whether it is prepared and the files' registered sha256 without
    TensorFlow, which is slow to import: a wrong manual dir or data dir is said first.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow only decodes files here, so its oneDNN math kernels do not matter; their
    # start-up notice is the one log line TF_CPP_MIN_LOG_LEVEL does not silence once Python runs.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow_datasets as tfds

    builder = tfds.builder(f"{TFDS_NAME}:{TFDS_VERSION}", data_dir=str(data_dir))
    # From the builder class: a builder restored from prepared files does not carry them.
    url_infos = tfds.builder_cls(TFDS_NAME).url_infos
    registered = {info.filename: info.checksum for info in url_infos.values()}
    prepared = builder.is_prepared()
    if not prepared:
        _check_before_preparing(data_dir, mnist_dir, registered)
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # TensorFlow only reads files; JAX owns devices
    tfds.disable_progress_bar()
    if not prepared:
        print(f"preparing MNIST with tensorflow-datasets in {data_dir} (once)", file=sys.stderr)
        _prepare(builder, tfds, data_dir, mnist_dir)
    arrays = {}
    for split in SPLIT_SIZES:
        batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        arrays[f"{split}_images"] = np.asarray(batch["image"][..., 0], dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(batch["label"], dtype=np.uint8)
    return arrays, registered


def _check_before_preparing(data_dir: Path, mnist_dir: Path | None,
                            registered: dict[str, str]) -> None:
    """What tfds would find wrong only after TensorFlow loads: no way to get the files, a
    manual dir without them or with others, a data dir where nothing can be written."""
    if mnist_dir is None and not _online():
        raise DataError(f"MNIST is not prepared in {data_dir} and this host cannot reach "
                        f"{_DOWNLOAD_HOST[0]} to download it", _MANUAL_DIR_FIX)
    if mnist_dir is not None:
        if not mnist_dir.is_dir():
            raise DataError(f"MNIST manual dir {mnist_dir} is not a folder", _MANUAL_DIR_FIX)
        missing = [name for name in MNIST_FILES if not (mnist_dir / name).is_file()]
        if missing:
            raise DataError(f"MNIST manual dir {mnist_dir} lacks {', '.join(missing)}",
                            _MANUAL_DIR_FIX)
        for name in MNIST_FILES:
            if _file_sha256(mnist_dir / name) != registered[name]:
                raise _wrong_sha256(name)
    try:
        (data_dir / TFDS_NAME).mkdir(parents=True, exist_ok=True)  # tfds would make it first
    except OSError as e:
        raise _cannot_prepare(data_dir, e, mnist_dir) from None


def _prepare(builder: Any, tfds: Any, data_dir: Path, mnist_dir: Path | None) -> None:
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    download_config = None if mnist_dir is None else \
        tfds.download.DownloadConfig(manual_dir=str(mnist_dir))
    try:  # tfds reports on stdout, where a command's answer goes (`--json`): to stderr
        with redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=download_config)
    except NonMatchingChecksumError as e:  # a download
        raise _wrong_sha256(next((name for name in MNIST_FILES if name in str(e)),
                                 "a file")) from None
    except OSError as e:
        raise _cannot_prepare(data_dir, e, mnist_dir) from None


def _wrong_sha256(name: str) -> DataError:
    return DataError(f"MNIST file {name} has the wrong sha256 (corrupt or not genuine MNIST)",
                     "replace it with a genuine copy")


def _cannot_prepare(data_dir: Path, e: OSError, mnist_dir: Path | None) -> DataError:
    culprit = str(e.filename or "")
    if mnist_dir is not None and culprit.startswith(str(mnist_dir)):
        fix = _MANUAL_DIR_FIX
    else:  # tfds' own folder
        fix = ("make it writable, or set $TFDS_DATA_DIR (or the pipeline's "
               "data.tfds_data_dir) to a folder that is")
    reason = f"{e.strerror}: {culprit}" if e.strerror and culprit else str(e)
    return DataError(f"could not prepare MNIST in {data_dir} ({reason})", fix)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _online(timeout: float = 3.0) -> bool:
    """A quick reachability probe: offline, tfds would retry its download for long before
    failing."""
    try:
        with socket.create_connection(_DOWNLOAD_HOST, timeout=timeout):
            return True
    except OSError:
        return False
