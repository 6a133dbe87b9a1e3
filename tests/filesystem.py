"""Helpers for tests of what commands write: a folder's files, and a filesystem that refuses."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def refusing_writes_of(suffix: str) -> Callable[..., None]:
    """`os.replace` as on a read-only filesystem, for files ending in `suffix`: tests may run as
    root, which writes through a folder's permissions, so a chmod cannot show this there."""
    replace = os.replace

    def refuse(source, target, *args, **kwargs):
        if str(target).endswith(suffix):
            raise OSError(errno.EROFS, "Read-only file system", str(target))
        return replace(source, target, *args, **kwargs)
    return refuse
