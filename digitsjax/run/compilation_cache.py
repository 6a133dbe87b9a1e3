"""JAX's persistent compilation cache, so a second run of a pipeline skips XLA compilation.

XLA compiles each program (the epoch scan, evaluation, and the small eager ops of
initialisation) in every new process. The cache stores the compiled executables on disk, keyed
by the program, the compiler options, the device and the jax/jaxlib versions, so a hit is the
very executable a fresh compile would build: results are bit for bit the same. Our programs
compile in well under JAX's default one-second threshold for caching, so it is set to zero.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import jax

CACHE_DIR_ENV = "DIGITSJAX_COMPILATION_CACHE"
"""A folder for the cache, or "off" to disable it."""
WRITE_FAILED = "Error writing persistent compilation cache entry"
"""The start of JAX's warning for each program it could not store in the cache."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitsjax" / "jax-compilation-cache"


def enable_compilation_cache() -> Path | None:
    """Turn the cache on (once per process, before compiling); return its folder, or None.

    The folder is $DIGITSJAX_COMPILATION_CACHE, else JAX's own $JAX_COMPILATION_CACHE_DIR,
    else ~/.cache/digitsjax/jax-compilation-cache. "off" disables it. A folder that cannot
    be created only costs the speed-up, so it is reported in one line and training goes on.

    A folder where no file can be created (a shared cache made read-only, or a mistake) is read
    but not written, silently: JAX's warning at every program it fails to store would be
    dozens of lines on every run, and a notice would precede every command's own output (and
    its one-line error), programs compiled or not.
    """
    chosen = os.environ.get(CACHE_DIR_ENV, "").strip()
    if chosen.lower() == "off":
        return None
    path = Path(chosen or jax.config.jax_compilation_cache_dir or default_cache_dir())
    path = path.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"digitsjax: compilation cache off: cannot create {path} ({e.strerror}); set "
              f"{CACHE_DIR_ENV} to a writable folder, or to off", file=sys.stderr)
        return None
    if not _writable(path):
        warnings.filterwarnings("ignore", message=WRITE_FAILED, category=UserWarning)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`: by trying (permissions do not stop root, a
    read-only mount stops everyone); the probe leaves nothing behind."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
