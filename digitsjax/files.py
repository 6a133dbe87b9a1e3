"""Every file digitsjax writes: whole or not at all, inside its folder, and never a stranger's.

Two rules hold for every write, in a workdir, a sweep folder or a path a user named:

- **Whole or not at all.** `write_atomic` writes to a temporary file beside the target, then
  renames it over the target (atomic within one folder on POSIX filesystems): a crash, a kill or
  a full disk leaves the old file, or none, never a half-written one.
- **Only what digitsjax wrote is replaced or deleted.** An `OwnedFolder` keeps a ledger, a file
  in the folder listing every entry digitsjax wrote there. A write refuses to replace an entry
  the ledger does not list, and deletion (a restart) deletes exactly the listed ones. An entry
  is listed before its bytes are written, so that a crash between the two leaves nothing
  digitsjax wrote unlisted. Ownership is a record, never a guess from names.

Paths are checked as they are handed out: an entry's name stays inside its folder (no `..`, no
absolute path, whatever a pipeline name or a grid value spelled), and no symbolic link on the way
to it is followed, since digitsjax never creates one. Writes that fail on the filesystem (a full
disk, a read-only folder, a name too long) raise `FileError`, one line, rather than `OSError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from digitsjax.errors import FileError

LEDGER = ".digitsjax.ledger"
"""The ledger of an `OwnedFolder`: one JSON string per line, the relative path of an entry
digitsjax wrote there (a folder's ends in "/")."""

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_WRITE_FIX = "free space or make it writable, or choose another place"


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a new temporary file beside `path`, then rename it to `path`.

    The temporary file is created exclusively and without following links, so a link planted
    at its name cannot redirect the bytes. A failure leaves `path` as it was and raises
    `FileError` (or whatever `write` raised, if not the filesystem).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        f = open_new(tmp)
    except OSError as e:  # whatever is at `tmp` is not ours: left as it is
        raise cannot_write(path, e) from None
    try:
        with f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        _remove_quietly(tmp)  # its own failure (a vanished folder) must not hide `e`
        if isinstance(e, OSError):
            raise cannot_write(path, e) from None
        raise


def open_new(path: Path) -> IO[bytes]:
    """A new file at `path`, open for writing: created exclusively and without following a
    link, so nothing already there (a file, a planted link) is written through or over.
    Raises the filesystem's OSError."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o644), "wb")


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def cannot_write(path: Path, error: OSError, fix: str = _WRITE_FIX) -> FileError:
    """The one-line error for a write the filesystem refused (`error`), naming `path`."""
    if error.errno == errno.EEXIST:  # a stray temporary file of ours, or a planted one
        return FileError(f"cannot write {path}: {error.filename} is in the way",
                         "move it away, or choose another place")
    reason = error.strerror or str(error)
    return FileError(f"cannot write {path} ({reason})", fix)


def check_new_file(path: Path) -> Path:
    """`path`, a file a user named outside any folder of digitsjax's (`--output`), checked
    before anything is done: nothing may be there (with no ledger beside it, digitsjax cannot
    tell a file it wrote from the user's, so it replaces neither), and no file may stand where
    one of its folders would."""
    path = Path(path)
    if path.is_dir():
        raise FileError(f"{path} is a folder", "give the path of a file to write")
    if os.path.lexists(path):
        raise FileError(f"{path} exists", "move it away, or choose another place")
    check_folders_of(path)
    return path


def check_folders_of(path: Path) -> None:
    """Refuse `path` where a file stands in the place of one of its folders."""
    for folder in Path(path).parents:  # the nearest first: the first that exists decides
        if os.path.lexists(folder):
            if not folder.is_dir():
                raise FileError(f"cannot write {path}: the file {folder} is in the way",
                                "move it away, or choose another place")
            return


def make_folders_of(path: Path) -> Path:
    """Create the missing folders of `path` (a file a user named); returns `path`."""
    check_folders_of(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(path, e) from None
    return Path(path)


def a_few(names: list[str], shown: int = 3) -> str:
    """The first `shown` names, and how many more: for a refusal that names a folder's entries
    (it may hold thousands)."""
    more = f" and {len(names) - shown:,} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _remove_quietly(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError:
        pass


@dataclass(frozen=True)
class OwnedFolder:
    """A folder digitsjax writes into, with the ledger of what it wrote there.

    Only one process writes a folder's run files (its lock sees to that); an entry written
    beside a run (a plot, an export) is listed with one append, which POSIX keeps whole.
    """

    path: Path

    def written(self) -> frozenset[str]:
        """The entries the ledger lists (relative POSIX paths; folders end in "/")."""
        try:
            text = (self.path / LEDGER).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return frozenset()
        except (OSError, UnicodeDecodeError) as e:
            raise FileError(f"{self.path / LEDGER} is unreadable ({e})",
                            "restore it, or move the folder's files away") from None
        return frozenset(_ledger_entries(text))

    def owns(self, name: str) -> bool:
        """Whether digitsjax wrote the entry `name` (a file, or a folder it created)."""
        written = self.written()
        return name in written or f"{name.rstrip('/')}/" in written

    def record(self, *names: str) -> None:
        """List `names` in the ledger (before writing them: see the module's docstring)."""
        written = self.written()  # read once: `names` may be a whole checkpoint's files
        new = [n for n in dict.fromkeys(names)
               if n not in written and f"{n.rstrip('/')}/" not in written]
        if new:
            self._append(LEDGER, "".join(json.dumps(n) + "\n" for n in new), record=False)

    def target(self, name: str, *, replace: bool = True) -> Path:
        """The path of the entry `name`, checked and listed, for a writer that writes it itself
        (orbax, TensorBoard, matplotlib): inside the folder, no link on the way, and not an
        entry of someone else's (`replace=False`: not an existing entry at all)."""
        path = self.checked(name, replace=replace)
        self.record(name)
        return path

    def checked(self, name: str, *, replace: bool = True) -> Path:
        """`target`'s checks alone: the path of the entry `name`, nothing listed or written."""
        path = self.inside(name)
        if os.path.lexists(path) and not (replace and self.owns(name)):
            whose = "digitsjax did not write it" if replace else "it would be replaced"
            raise FileError(f"{path} exists and {whose}", "move it away, or choose another place")
        return path

    def targets(self, *names: str) -> list[Path]:
        """`target` for entries written together (a command's pictures): every one is checked
        before any is listed, so that one refused leaves the folder and its ledger as they were."""
        paths = [self.checked(name) for name in names]
        self.record(*names)
        return paths

    def inside(self, name: str) -> Path:
        """`name` resolved in this folder, refused if it leaves it or passes a link."""
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
            raise FileError(f"{name!r} is not a name inside {self.path}",
                            "use a plain name, without '..' or a leading '/'")
        for depth in range(1, len(parts) + 1):
            step = self.path.joinpath(*parts[:depth])
            if step.is_symlink():
                raise FileError(f"{step} is a symbolic link, which digitsjax does not follow",
                                "replace it with a real file or folder, or choose another place")
        return self.path.joinpath(*parts)

    def folder(self, name: str) -> Path:
        """The subfolder `name`, created (and listed) unless it exists."""
        path = self.inside(name)
        if path.is_dir():
            return path
        self.record(f"{name.rstrip('/')}/")
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise cannot_write(path, e) from None
        return path

    def write(self, name: str, write: Callable[[IO[bytes]], None]) -> Path:
        """Write the file `name` whole (`write_atomic`), replacing only an earlier one of ours."""
        path = self.target(name)
        write_atomic(path, write)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, lambda f: f.write(text.encode("utf-8")))

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2) + "\n")

    def append(self, name: str, text: str) -> Path:
        """Append `text` to the file `name` (created and listed on first use)."""
        return self._append(name, text, record=True)

    def _append(self, name: str, text: str, record: bool) -> Path:
        path = self.target(name) if record else self.inside(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NO_FOLLOW, 0o644)
            with open(fd, "ab") as f:
                f.write(text.encode("utf-8"))
        except OSError as e:
            raise cannot_write(path, e) from None
        return path

    def strangers(self, names: Iterable[str]) -> list[str]:
        """The files and folders at or under `names` that digitsjax did not write, in order."""
        written, found = self.written(), []
        for name in names:
            found += [n for n in _walk(self.path, name) if n not in written]
        return sorted(found)

    def prune(self) -> None:
        """Drop from the ledger the entries that are gone (after a `remove`), so that a name the
        user later gives a file or folder of theirs is not taken for one of digitsjax's."""
        kept = [name for name in sorted(self.written()) if os.path.lexists(self.path / name)]
        write_text_atomic(self.inside(LEDGER), "".join(json.dumps(n) + "\n" for n in kept))

    def remove(self, names: Iterable[str]) -> None:
        """Delete the entries at or under `names` that the ledger lists, and nothing else: a
        listed folder is removed only once empty."""
        written = self.written()
        entries = sorted((n for name in names for n in _walk(self.path, name) if n in written),
                         key=lambda n: n.count("/") - n.endswith("/"), reverse=True)
        for entry in entries:  # deepest first, so a folder's files go before it
            path = self.path / entry
            try:
                path.rmdir() if entry.endswith("/") else path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    raise cannot_write(path, e, "make the folder writable") from None


def _ledger_entries(text: str) -> Iterable[str]:
    """The ledger's entries. Its lines are parsed as one JSON array (a JSON string holds no
    raw newline), a few times faster than line by line, which runs only where a line is not
    JSON (one cut short by a crash: its entry was not written either)."""
    lines = text.splitlines()
    try:
        entries = json.loads(f"[{','.join(lines)}]")
    except ValueError:
        entries = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return [entry for entry in entries if isinstance(entry, str)]


def _walk(root: Path, name: str) -> list[str]:
    """`name` and everything under it, relative to `root` (folders end in "/"); links are
    listed as entries, never followed."""
    path = root / name
    if not os.path.lexists(path):
        return []
    if path.is_symlink() or not path.is_dir():
        return [name.rstrip("/")]
    found = [f"{name.rstrip('/')}/"]
    for child in sorted(os.listdir(path)):
        found += _walk(root, f"{name.rstrip('/')}/{child}")
    return found


DEFAULT_WORKDIR_ROOT = Path("checkpoints")
"""Where a run goes when no workdir is given: DEFAULT_WORKDIR_ROOT / <pipeline name>, for the
command line and the Python API alike."""


def default_workdir(name: str) -> Path:
    """DEFAULT_WORKDIR_ROOT / `name`, refused unless `name` is one plain folder there (a name
    spelled `../x`, `/x` or `a/b` would put a run outside it or inside another's)."""
    if name in ("", ".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise FileError(f"{name!r} is not a plain folder name, so it cannot name the workdir "
                        f"{DEFAULT_WORKDIR_ROOT}/<name>", "give the pipeline a plain name, such "
                        "as mnist_mlp, or choose the workdir")
    return DEFAULT_WORKDIR_ROOT / name
