"""Stopping cleanly when a preemptible host says so (SIGTERM) or the user presses Ctrl-C (SIGINT).

While a `PreemptionGuard` is active, the first of these signals only sets a flag. The training
loop looks at it between compiled chunks (never inside one), makes the end of the current chunk
a checkpoint, waits until that checkpoint is complete and raises `Preempted`; the CLI exits with
`exit_code(signum)`: 143 for SIGTERM, 130 for SIGINT, what a shell reports for a process those
signals ended. A second signal gets the default behaviour and ends the process at once; the last
complete checkpoint still stands (orbax only renames a checkpoint into place once it is written).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The exit status of a run stopped by `signum`: 128 + its number (143 SIGTERM, 130 SIGINT)."""
    return 128 + signum


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint at `step`."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}, which is "
                         "checkpointed")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class PreemptionGuard:
    """Turns SIGTERM/SIGINT into a request (`signum`) that the training loop honours.

    Signal handlers can only be installed from the main thread; elsewhere (a notebook's worker
    thread, say) the guard stays inactive and the signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._request_stop) for s in STOP_SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s in STOP_SIGNALS:  # a second signal means "now"
            signal.signal(s, signal.SIG_DFL)
