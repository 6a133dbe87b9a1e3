"""TensorBoard scalars: every epoch's metrics record is also written as an event file.

The files sit in the workdir itself, so `tensorboard --logdir checkpoints` lists every run (and
every sweep variant) by its folder name. tensorboardX writes them, which keeps TensorFlow out of
training. A resumed run starts its file with TensorBoard's purge marker at the resumed step, so
the events a killed run wrote past its last checkpoint are dropped (they are replayed exactly).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    return tensorboardX.SummaryWriter

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
    """

    def __init__(self, workdir: Path, start_step: int):
        self._workdir, self._start_step = workdir, start_step
        self._writer: SummaryWriter | None = None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            self._writer = _import_summary_writer()(
                str(self._workdir), purge_step=self._start_step + 1 if self._start_step else None,
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


def remove_event_files(workdir: Path) -> None:
    for path in Path(workdir).glob(EVENT_FILES):
        path.unlink()
