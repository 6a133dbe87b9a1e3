"""One writer per workdir: a lock that names its holder and dies with it.

Two trainings of one workdir would interleave `metrics.jsonl` and overwrite each other's
checkpoints. The lock is `flock` on `WORKDIR/.digitsjax.lock`: the kernel releases it when its
process ends, however it ends (SIGKILL, a crash, a reboot), so a lock can never outlive its
holder. The file also says who holds it (pid, host, since when), for the one-line refusal; a
file left by a holder that is gone is taken over with a notice.

The lock file is listed in the workdir's ledger (`files.OwnedFolder`) and opened without
following a link: a `.digitsjax.lock` that points elsewhere is refused, never written through.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from digitsjax.errors import WORKDIR, CheckpointError
from digitsjax.files import OwnedFolder, cannot_write

LOCK = ".digitsjax.lock"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextmanager
def workdir_lock(workdir: Path, notice: Callable[[str], None]) -> Iterator[None]:
    """Hold `workdir`'s lock for the duration, or raise `CheckpointError` naming its holder
    (a `FileError` where the lock cannot be written: a link, a full or read-only disk)."""
    files = OwnedFolder(Path(workdir))
    path = files.inside(LOCK)  # refuses a link before anything is written
    files.record(LOCK)
    fd = _acquire(path, workdir)
    try:
        left = _read_holder(fd)
        if left:
            notice(f"notice: {workdir} was last trained by {left}, which ended without "
                   "releasing it; taking it over")
        try:
            _write_holder(fd)
        except OSError as e:  # a full disk: the run could write nothing else either
            raise cannot_write(path, e) from None
        yield
    finally:
        os.ftruncate(fd, 0)  # released cleanly: no notice for the next holder
        os.close(fd)


def _acquire(path: Path, workdir: Path) -> int:
    """An open descriptor holding the lock on the file that is at `path` now."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link put there since `inside` looked
                OwnedFolder(path.parent).inside(path.name)
            raise cannot_write(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) or "another process"
            os.close(fd)
            raise CheckpointError(
                f"{workdir} is being trained by {holder}",
                f"wait for it to finish, or choose another with {WORKDIR}") from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the file was replaced between open and lock: lock the new one


def _read_holder(fd: int) -> str:
    """`pid 123 on host h since 2026-11-29T22:30:00`, or "" for an empty (released) lock."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096) or b"null")
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, TypeError, KeyError):
        return ""


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())


def holder_of(workdir: Path) -> str | None:
    """Who is training `workdir` now (`pid 123 on host since ...`), or None: a read, no lock."""
    try:
        fd = os.open(Path(workdir) / LOCK, os.O_RDONLY | _NO_FOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd) or "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
