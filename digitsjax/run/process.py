"""Process-wide settings, made only by the program's entry points, never by an import.

The CLI calls these before it runs a command; `train_pipeline`, the Python API's entry point
for training, calls `quiet_libraries` itself. Importing any digitsjax module leaves logging,
hooks, `sys.modules` and `jax.config` as they were (a test holds this).
"""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Orbax narrates every save at INFO and WARNING through absl: keep its errors only."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)


def hide_library_tracebacks() -> None:
    """Orbax logs each failure with a traceback through absl; the CLI reports it in one line."""
    logging.getLogger("absl").addFilter(lambda record: record.levelno >= logging.CRITICAL)
