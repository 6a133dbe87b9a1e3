"""User-facing errors, as data: what is wrong, and how to fix it.

Anything a user can get wrong (a pipeline key, a data folder, a checkpoint, an image) raises a
`UserError` carrying the `problem` and the `fix`. A fix names remedies through the markers
below (`RESTART`, `WORKDIR`, `CHECKPOINT`, `MNIST_DIR`, `setting(key, value)`), never through a
command-line flag: the library is called from Python as often as from the shell, and each caller
spells a remedy its own way. `str(error)` spells them for Python callers (`restart=True`, a
pipeline key); the CLI renders them as flags (`--restart`, `--set key=value`) and prints one
line. Bugs stay ordinary exceptions, so they still surface loudly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

RESTART = "⟨restart⟩"
"""Start the run over, discarding what the workdir holds."""
WORKDIR = "⟨workdir⟩"
"""Another workdir."""
CHECKPOINT = "⟨checkpoint⟩"
"""Which checkpoint to load: latest, best or a step."""
MNIST_DIR = "⟨mnist_dir⟩"
"""The folder holding the four MNIST IDX files."""
POINT = "⟨point⟩"
"""One point N of a sweep, given with the sweep's folder."""

_MARKER = re.compile(r"⟨(restart|workdir|checkpoint|mnist_dir|point|set ([^=⟩]+)=([^⟩]*))⟩")


def setting(key: str, value: object) -> str:
    """A marker for `key = value` in the pipeline (`--set key=value` on the command line)."""
    return f"⟨set {key}={value}⟩"


# How each caller spells a remedy: a table that both renderings read.
LIBRARY: Mapping[str, str] = {
    "restart": "restart=True",
    "workdir": "the workdir argument",
    "checkpoint": "the checkpoint argument (latest, best or a step)",
    "mnist_dir": "mnist_dir=DIR (or $DIGITSJAX_MNIST_DIR=DIR)",
    "point": "point=N",
    "set": "pipeline key {key} = {value}",
}
COMMAND_LINE: Mapping[str, str] = {
    "restart": "--restart",
    "workdir": "--workdir",
    "checkpoint": "--checkpoint",
    "mnist_dir": "--mnist-dir DIR (or $DIGITSJAX_MNIST_DIR=DIR)",
    "point": "--point N",
    "set": "--set {key}={value}",
}


def render(text: str, spelling: Mapping[str, str] = LIBRARY) -> str:
    """`text` with every remedy marker spelled as `spelling` says."""
    def spell(match: re.Match[str]) -> str:
        if match.group(2) is not None:
            return spelling["set"].format(key=match.group(2), value=match.group(3))
        return spelling[match.group(1)]

    return _MARKER.sub(spell, text)


class UserError(Exception):
    """A mistake the user can fix: `problem` says what is wrong, `fix` how to fix it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem, fix)
        self.problem, self.fix = problem, fix

    def render(self, spelling: Mapping[str, str] = LIBRARY) -> str:
        """One line: the problem, then the fix with its remedies spelled for the caller."""
        return render(f"{self.problem}; {self.fix}" if self.fix else self.problem, spelling)

    def __str__(self) -> str:
        return self.render()


class ConfigError(UserError):
    """A pipeline file or an override of one of its keys is invalid."""


class DataError(UserError):
    """MNIST is missing, corrupt or cannot be prepared."""


class CheckpointError(UserError):
    """A workdir or checkpoint is missing, incompatible or unreadable."""


class ClusterError(UserError):
    """The multi-process setup (flags, environment, coordinator) is incomplete or unreachable."""


class ImageError(UserError):
    """An image to classify cannot be decoded, is too large, or shows no digit."""


class DivergenceError(UserError):
    """Training produced a NaN or infinite loss (usually a learning rate that is too high)."""


class FileError(UserError):
    """A file digitsjax would write cannot be: it is someone else's, a link, outside its folder,
    or the filesystem refuses (full, read-only, a name too long)."""


class ResourceError(UserError):
    """A run would need more memory than the machine has (refused before allocating)."""
