"""TensorBoard scalars: every epoch's metrics record is also written as an event file.

The files sit in the workdir itself, so `tensorboard --logdir checkpoints` lists every run (and
every sweep variant) by its folder name. tensorboardX writes them, which keeps TensorFlow out of
training. A resumed run starts its file with TensorBoard's purge marker at the resumed step, so
the events a killed run wrote past its last checkpoint are dropped (they are replayed exactly).

tensorboardX names and opens its event file itself; it opens it here instead, through its hook
for other storage (`register_writer_factory`): the name is listed in the workdir's ledger first,
and the file is created new, never through a link or over an existing file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from digitsjax.files import OwnedFolder, cannot_write, open_new

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter


def _import_summary_writer() -> type[SummaryWriter]:
    """tensorboardX's SummaryWriter, imported when a run first writes, and without PyTorch.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors, which
    would make PyTorch's import part of every run's start-up (`make bench` shows it). A None
    in `sys.modules` makes that `import torch` fail, which tensorboardX expects and handles;
    the entry is removed again, so the process can still import torch later.
    """
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import tensorboardX
        finally:
            del sys.modules["torch"]
    import tensorboardX
    from tensorboardX.record_writer import register_writer_factory

    register_writer_factory(_OWNED, _OwnedEventFiles())
    return tensorboardX.SummaryWriter


_OWNED = "digitsjax-owned"
"""The prefix (`PREFIX:path`) by which tensorboardX hands its files to `_OwnedEventFiles`."""


class _OwnedEventFiles:
    """tensorboardX's writer factory for `digitsjax-owned:` paths: the event file is listed in
    its folder's ledger, then created exclusively, without following a link."""

    def directory_check(self, path: str) -> None:
        """The workdir exists already: the run made it."""

    def open(self, path: str) -> IO[bytes]:
        file = Path(path.split(":", 1)[1])
        target = OwnedFolder(file.parent).target(file.name, replace=False)
        try:
            return open_new(target)
        except OSError as e:
            raise cannot_write(target, e) from None

EVENT_FILES = "events.out.tfevents.*"
# metrics.jsonl key -> TensorBoard tag; the section before "/" groups the charts.
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/val",
    "test_accuracy": "accuracy/test",
    "examples_per_second": "speed/examples_per_second", "epoch_seconds": "speed/epoch_seconds",
}


class ScalarWriter:
    """Appends metrics records to a new event file in `workdir`, one flush per record.

    The file is created with the first record: a finished run that is invoked again adds none.
    Without tensorboardX (an environment that lacks it, such as an accelerator image), a
    `missing` handler is told once and no file is written: the run's metrics file holds the
    same records, and an epoch's work is not worth losing for a copy of them. Without a
    handler, the ImportError is raised.
    """

    def __init__(self, workdir: Path, start_step: int,
                 missing: Callable[[ImportError], None] | None = None) -> None:
        self._workdir, self._start_step, self._on_missing = workdir, start_step, missing
        self._writer: SummaryWriter | None = None
        self._missing = False

    def write(self, record: Mapping[str, Any]) -> None:
        if self._missing:
            return
        if self._writer is None:
            try:
                summary_writer = _import_summary_writer()
            except ImportError as e:
                if self._on_missing is None:
                    raise
                self._missing = True
                self._on_missing(e)
                return
            self._writer = summary_writer(
                f"{_OWNED}:{self._workdir}",
                purge_step=self._start_step + 1 if self._start_step else None,
                # Event files are named by the second, and TensorBoard reads them in name
                # order: a nanosecond suffix keeps a resume within the same second after the
                # file whose steps its purge marker must drop.
                filename_suffix=f".{time.time_ns():020d}")
        for key, tag in TAGS.items():
            if key in record:
                self._writer.add_scalar(tag, record[key], global_step=record["step"])
        self._writer.flush()  # once per epoch, so that a live TensorBoard follows the run

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
