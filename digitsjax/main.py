"""The `digitsjax` process: runs one command of digitsjax.cli and ends the way a shell expects.

Exit statuses: 0 done; 1 `verify` could not reproduce the run; 2 a `UserError` or a malformed
command line, printed as one line on stderr (`--debug` shows the traceback); 143 / 130 training
stopped by SIGTERM / SIGINT after checkpointing (see preemption.py), so re-running the same
command continues it; 130 any other command stopped by Ctrl-C; 141 stdout closed by its reader
(`digitsjax ... | head -1`). 130, 141 and 143 are 128 + the signal's number, as a shell reports
for a process that signal ended. The statuses a command returns itself (1, 2) are
digitsjax.cli's; those of the process's end (130, 141) are this module's.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from digitsjax import cli
from digitsjax.cli import EXIT_USER_ERROR
from digitsjax.errors import COMMAND_LINE, UserError
from digitsjax.run.preemption import Preempted, exit_code

EXIT_INTERRUPTED = exit_code(signal.SIGINT)
EXIT_BROKEN_PIPE = exit_code(signal.SIGPIPE)
RESUMABLE = ("train", "sweep")
"""Commands that a second run continues where a signal stopped them."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; however the process ends, it says so in one line at most.

    Ctrl-C outside the training loop (which checkpoints first, see preemption.py) ends with
    `digitsjax: interrupted` and 130. A reader that stops reading (`digitsjax ... | head -1`)
    ends it with 141, silently, as `cat` or `grep` end: the output was cut short, which a
    `set -o pipefail` script should see, and which must differ from 0, 1 and 2. Python ignores
    SIGPIPE, so the closed pipe is a BrokenPipeError at a write or at the flush below; stdout
    then goes to /dev/null, so that Python's own flush at exit has nothing left to complain of.
    A Ctrl-C has three more ways to escape as a traceback or a crash while JAX loads and the
    process exits; `_parse_and_load_jax`, `_keep_interrupts` and `_end_interrupted` close them.
    """
    previous_hook = sys.unraisablehook
    sys.unraisablehook = ours = _keep_interrupts(previous_hook)
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in Python's exit
    except (KeyboardInterrupt, ImportError) as e:
        if not _is_interrupt(e):
            raise
        _end_interrupted()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        if sys.unraisablehook is ours:  # one set meanwhile (run.checkpoint's) stays; it calls ours
            sys.unraisablehook = previous_hook
        atexit.unregister(_end_at_once_on_ctrl_c)
        atexit.register(_end_at_once_on_ctrl_c)  # last, so that it runs first


def _end_interrupted() -> NoReturn:
    """Say `digitsjax: interrupted` and end the process at once with 130, its output flushed.

    Not by returning the status: CPython (3.11) ends the process by SIGINT at exit, whatever
    the status, when a KeyboardInterrupt ended an `exec` of source text, even one caught later
    (Modules/main.c looks at `_Py_UnhandledKeyboardInterrupt` after finalizing; only running
    source text again resets it), and dataclasses and named tuples are made that way while
    modules load. So the process ends here, before finalizing; what it skips are the exit
    handlers of JAX and the others, which a Ctrl-C at exit skips as well
    (`_end_at_once_on_ctrl_c`). A caller in the same process is ended with it, as a Ctrl-C
    would end it.
    """
    print("digitsjax: interrupted", file=sys.stderr)
    _end_at_once_on_ctrl_c()  # a second Ctrl-C meanwhile ends it the same way
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed by its reader: nothing to keep
            stream.flush()
    os._exit(EXIT_INTERRUPTED)


def _end_at_once_on_ctrl_c() -> None:
    """At exit, before the exit handlers of JAX and the others: the command is done, so a Ctrl-C
    now ends the process at once with 130, rather than raise in those handlers (printed as an
    ignored exception, and the process may then end by SIGINT)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(EXIT_INTERRUPTED))


def _is_interrupt(error: BaseException | None) -> bool:
    """A Ctrl-C, or an error that a Ctrl-C caused: the ImportError a C extension (jaxlib's,
    tensorstore's) makes of one arriving while it initialises, the CheckpointError a restore
    makes of orbax's error about one."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _parse_and_load_jax(argv: list[str] | None) -> argparse.Namespace:
    """The command line, parsed, and JAX imported, with Ctrl-C held back until both are done.

    A KeyboardInterrupt raised while jaxlib's C++ extension initialises kills the process with
    SIGSEGV or SIGABRT, or ends it in an ImportError traceback (measured: jax 0.10, Ctrl-C
    0.2 s after start). Held back, the Ctrl-C arrives once the import is done, in ordinary code.
    It is held from before the parser's imports, as the threads they start (numpy's) inherit
    the hold: a thread started earlier would take the signal while this one holds it.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        args = cli.build_parser().parse_args(argv)
        import jax  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return args


def _keep_interrupts(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """A `sys.unraisablehook` that delivers a Ctrl-C again rather than lose it.

    A KeyboardInterrupt raised while Python runs a callback it cannot raise from (jax's
    garbage-collection callback runs often while JAX loads) is printed as "Exception ignored"
    and dropped, and the command would carry on. The process sends itself SIGINT again, from
    another thread a moment later, once this hook has returned (sent from here, it would land
    in the hook and be dropped again); a signal, not `_thread.interrupt_main`, so that it
    waits while SIGINT is held (`_parse_and_load_jax`). Every other unraisable goes to
    `hook` as before.
    """
    def keep(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again = threading.Timer(0.01, _interrupt_again)
            again.daemon = True
            again.start()
        else:
            hook(unraisable)

    return keep


def _interrupt_again() -> None:
    """SIGINT to this process, taken by a thread that does not hold it back: not this one."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    os.kill(os.getpid(), signal.SIGINT)


def _run(argv: list[str] | None) -> int:
    """Parse the command line, make the process-wide settings, run the command; a user's
    mistake is one line and status 2, and a stopped training run says how to continue."""
    args = _parse_and_load_jax(argv)
    from digitsjax.run import process
    from digitsjax.run.compilation_cache import enable_compilation_cache

    process.quiet_libraries()
    if not args.debug:
        process.hide_library_tracebacks()
    enable_compilation_cache()  # a second run of a pipeline skips compilation
    try:
        return cli.run_command(args)
    except Preempted as e:
        hint = "; run the same command again to continue" if args.command in RESUMABLE else ""
        print(f"digitsjax: {e}{hint}", file=sys.stderr)
        return e.exit_code
    except UserError as e:
        if _is_interrupt(e):
            raise KeyboardInterrupt from e  # not the user's mistake: Ctrl-C
        if args.debug:
            traceback.print_exc()
        print(f"digitsjax: error: {e.render(COMMAND_LINE)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()  # where it was when stopped
        raise
