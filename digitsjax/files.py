"""Writing a file whole or not at all: the one atomic-write helper of the package.

A crash, a kill or a full disk in the middle of a write leaves the old file (or none), never a
half-written one: the bytes go to a temporary file beside the target, which is then renamed over
it (a rename within one folder is atomic on POSIX filesystems).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


DEFAULT_WORKDIR_ROOT = Path("checkpoints")
"""Where a run goes when no workdir is given: DEFAULT_WORKDIR_ROOT / <pipeline name>, for the
command line and the Python API alike."""
