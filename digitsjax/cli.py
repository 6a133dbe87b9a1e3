"""The `digitsjax` command: a thin layer of argument parsing over the library.

Exit statuses: 0 done; 1 `verify` could not reproduce the run; 2 a `UserError` or a malformed
command line, printed as one line on stderr (`--debug` shows the traceback); 143 / 130 training
stopped by SIGTERM / SIGINT after checkpointing (see preemption.py), so re-running the same
command continues it; 130 any other command stopped by Ctrl-C; 141 stdout closed by its reader
(`digitsjax ... | head -1`). 130, 141 and 143 are 128 + the signal's number, as a shell reports
for a process that signal ended.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from digitsjax.errors import COMMAND_LINE, ConfigError, UserError
from digitsjax.run.preemption import Preempted, exit_code

if TYPE_CHECKING:  # the commands import the library lazily, to start fast
    from digitsjax.core.config import Pipeline
    from digitsjax.core.data import MNIST
    from digitsjax.run.trained import Network
    from digitsjax.run.workdir import Workdir

DEFAULT_WORKDIR_ROOT = Path("checkpoints")
EXIT_NOT_REPRODUCED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = exit_code(signal.SIGINT)
EXIT_BROKEN_PIPE = exit_code(signal.SIGPIPE)
RESUMABLE = ("train", "sweep")
"""Commands that a second run continues where a signal stopped them."""
EXPORT_FORMATS = ("onnx", "stablehlo", "npz")
"""`digitsjax export --format`: the keys of apps.export.FORMATS (not imported: it loads JAX)."""
PREVIEW_COUNT, MAX_PREVIEW_COUNT = 30, 200
"""`digitsjax augment-preview --count`: its default (apps.plots.AUGMENT_COUNT) and limit."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"digitsjax: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="digitsjax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"digitsjax {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training_commands(commands)
    _add_augment_preview_command(commands)
    _add_trained_network_commands(commands)
    _add_serve_command(commands)
    return parser


def _version() -> str:
    """The installed package's version: the one every workdir's manifest records."""
    from importlib import metadata

    try:
        return metadata.version("digitsjax")
    except metadata.PackageNotFoundError:  # a source tree run without installing it
        return "(not installed)"


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a pipeline (continues from its checkpoints)")
    train.add_argument("pipeline", type=Path, help="a pipelines/*.toml file, or a workdir to "
                       "continue with its own pipeline (e.g. --set train.epochs=30)")
    train.add_argument("--workdir", type=Path,
                       help="output folder (default: checkpoints/<pipeline name>, or the "
                       "workdir given)")
    train.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a pipeline key, e.g. train.epochs=3")
    train.add_argument("--restart", action="store_true",
                       help="discard the workdir's checkpoints and start over")
    _add_mnist_dir(train)
    _add_cluster(train)

    sweep = commands.add_parser("sweep", help="train a pipeline once per point of a grid")
    sweep.add_argument("pipeline", type=Path, help="a pipelines/*.toml file")
    sweep.add_argument("--grid", dest="grid", action="append", default=[],
                       metavar="KEY=[V,...]", help="values of a pipeline key, e.g. "
                       "model.hidden=[[30],[100]] (adds to the pipeline's [sweep] table)")
    sweep.add_argument("--workdir", type=Path,
                       help="sweep folder, one workdir per variant inside "
                       "(default: checkpoints/<pipeline name>)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a key of every variant")
    sweep.add_argument("--restart", action="store_true",
                       help="discard the variants' checkpoints and start over")
    sweep.add_argument("--max-models-per-program", type=_positive(int), metavar="N",
                       help="train at most N points in one program (default: as many as "
                       "the device's memory holds)")
    sweep.add_argument("--separate", action="store_true",
                       help="train every point as its own run, one after another")
    _add_mnist_dir(sweep)

    runs = commands.add_parser("runs", help="one line per run under a folder: state, epochs, "
                               "best validation, test accuracy, fingerprint, age")
    runs.add_argument("folder", type=Path, nargs="?", default=DEFAULT_WORKDIR_ROOT,
                      help="default: %(default)s")
    compare = commands.add_parser("compare", help="runs side by side: the pipeline keys that "
                                  "differ, their results, their curves in one plot")
    compare.add_argument("workdirs", type=Path, nargs="+", metavar="WORKDIR")
    compare.add_argument("--output", type=Path, metavar="PNG",
                         help="the plot (default: FIRST_WORKDIR/plots/compare.png)")

    verify = commands.add_parser(
        "verify", help="replay a finished workdir's pipeline; check it ends bit for bit the same")
    verify.add_argument("workdir", type=Path)
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    _add_mnist_dir(verify)


def _add_augment_preview_command(commands: argparse._SubParsersAction) -> None:
    preview = commands.add_parser(
        "augment-preview", help="draw step 0's batch before and after the pipeline's [augment] "
        "distortions, without training")
    preview.add_argument("pipeline", type=Path, help="a pipelines/*.toml file, or a workdir "
                         "(its recorded pipeline)")
    preview.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE",
                         help="override a pipeline key, e.g. augment.elastic_alpha=34")
    preview.add_argument("--out", type=Path, metavar="FILE.png", help="the picture to write "
                         "(default: <pipeline name>-augment.png here); never overwritten")
    preview.add_argument("--count", type=_preview_count, default=PREVIEW_COUNT, metavar="N",
                         help="digits shown, at most one batch (default: %(default)s)")
    _add_mnist_dir(preview)
    preview.set_defaults(workdir=None)  # read by _pipeline_and_workdir; nothing is written there


def _preview_count(text: str) -> int:
    count = int(_positive(int)(text))
    if count > MAX_PREVIEW_COUNT:
        raise argparse.ArgumentTypeError(f"{count} digits are too many to draw (at most "
                                         f"{MAX_PREVIEW_COUNT})")
    return count


def _add_trained_network_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="test loss/accuracy, per-digit accuracy and confusion matrix")
    evaluate.add_argument("workdir", type=Path)
    _add_checkpoint(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    _add_mnist_dir(evaluate)

    predict = commands.add_parser("predict", help="classify PNG/JPEG pictures of digits")
    predict.add_argument("workdir", type=Path)
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                         help="any size, color or gray, dark ink on light paper or the reverse")
    _add_checkpoint(predict)
    predict.add_argument("--json", action="store_true", help="print one JSON object")

    plots = commands.add_parser("plots", help="write PNG plots into DIR/plots/ (a workdir "
                                "or a sweep; a sweep's point N into DIR/plots/point-N/)")
    plots.add_argument("workdir", type=Path, metavar="DIR")
    _add_checkpoint(plots)
    _add_mnist_dir(plots)

    export = commands.add_parser("export", help="write the network as ONNX, StableHLO or "
                                 "NumPy arrays, for use without digitsjax")
    export.add_argument("workdir", type=Path)
    _add_checkpoint(export)
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--output", type=Path, metavar="PATH",
                        help="the file to write (default: WORKDIR/export/model.FORMAT), "
                        "described by PATH.json beside it; only an earlier export is replaced")


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="a web page to draw digits for the network")
    serve.add_argument("workdir", type=Path)
    _add_checkpoint(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    from digitsjax.apps.serve import Limits  # light: numpy and Pillow, not JAX

    defaults = Limits()
    limits = serve.add_argument_group("limits per request (what a bad client can cost)")
    limits.add_argument("--max-body-bytes", type=_positive(int), metavar="N",
                        default=defaults.max_body_bytes,
                        help="larger requests get 413 (default: %(default)s)")
    limits.add_argument("--max-pixels", type=_positive(int), metavar="N",
                        default=defaults.max_pixels,
                        help="larger images get 422 (default: %(default)s)")
    limits.add_argument("--timeout", type=_positive(float), metavar="SECONDS",
                        default=defaults.timeout_seconds,
                        help="close connections silent for this long (default: %(default)s)")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a finite number of `kind` above zero."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    return parse


def _add_checkpoint(parser: argparse.ArgumentParser, point: bool = True) -> None:
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    if point:
        parser.add_argument("--point", type=_non_negative_int, metavar="N",
                            help="in a sweep folder: its point N (row N of sweep.csv, from 0)")


def _non_negative_int(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a point number (0, 1, 2, ...)")
    return value


def _resolve_point(args: argparse.Namespace) -> None:
    """`SWEEPDIR --point N`: the workdir holding point N, and its model there (the sweep's
    folder stays in `args.sweep_dir`)."""
    args.model = None
    if getattr(args, "point", None) is not None:
        from digitsjax.apps.sweep import locate_point

        args.sweep_dir = args.workdir
        args.workdir, args.model = locate_point(args.workdir, args.point)


def _add_mnist_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mnist-dir", help="folder with the four MNIST .gz files, for hosts "
                        "without internet (also $DIGITSJAX_MNIST_DIR)")


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process (several hosts)", "give all three on every process, or none: then JAX "
        "detects Cloud TPU VMs, Slurm, Open MPI and Kubernetes, else the run is one process")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's address and a free port (also "
                       "$DIGITSJAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help="processes in the run (also $DIGITSJAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, metavar="I",
                       help="this process, 0..N-1 (also $DIGITSJAX_PROCESS_ID)")


def cmd_train(args: argparse.Namespace) -> int:
    pipeline, workdir = _pipeline_and_workdir(args)  # a mistake shows before JAX loads

    from digitsjax.run import cluster
    from digitsjax.run.backend import start_backend
    from digitsjax.run.loop import train_pipeline

    cluster.initialize(cluster.resolve_cluster(args.coordinator_address, args.num_processes,
                                               args.process_id))
    start_backend(pipeline.train.deterministic)  # after joining the cluster, as JAX requires
    train_pipeline(pipeline, workdir, mnist_dir=args.mnist_dir, restart=args.restart,
                   progress=sys.stderr.isatty())
    return 0


def _pipeline_and_workdir(args: argparse.Namespace) -> tuple[Pipeline, Path]:
    """A pipeline file and its workdir; or a workdir in its place, with its recorded pipeline."""
    from digitsjax.core.config import load_pipeline, override_pipeline

    if args.pipeline.is_dir():
        from digitsjax.run.workdir import MANIFEST, Workdir

        if not (args.pipeline / MANIFEST).exists():
            raise ConfigError(f"pipeline {args.pipeline} is a folder, and not a digitsjax "
                              f"workdir to continue (it has no {MANIFEST})",
                              "pass a path such as pipelines/mnist_mlp.toml")

        recorded = Workdir.open(args.pipeline).pipeline
        return (override_pipeline(recorded, args.overrides, str(args.pipeline)),
                args.workdir or args.pipeline)
    pipeline = load_pipeline(args.pipeline, args.overrides)
    return pipeline, args.workdir or DEFAULT_WORKDIR_ROOT / pipeline.name


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Step 0's batch as loaded and as training distorts it: no training, no workdir."""
    pipeline, _ = _pipeline_and_workdir(args)  # a mistake shows before JAX loads
    out = args.out or Path(f"{pipeline.name.replace('/', '-')}-augment.png")
    _check_new_png(out)

    from digitsjax.apps.plots import augmentation_sample, augmentation_title, plot_augmentation
    from digitsjax.core import augment
    from digitsjax.core.data import load_mnist
    from digitsjax.run.backend import start_backend

    start_backend(pipeline.train.deterministic)
    data = load_mnist(pipeline.data, args.mnist_dir)
    before, after = augmentation_sample(pipeline, data.train_images, args.count)
    try:
        plot_augmentation(before, after, out, augmentation_title(pipeline, len(before)))
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror})", "choose another --out") from None
    if not augment.active(pipeline.augment):
        print(f"digitsjax: [augment] is off in {args.pipeline} (every strength is 0): the "
              "lower rows repeat the upper ones; turn it on with e.g. "
              "--set augment.rotation=15 --set augment.elastic_alpha=34", file=sys.stderr)
    print(out)
    return 0


def _check_new_png(out: Path) -> None:
    """Refuse an output path that is not a .png, already exists, or lies in no folder."""
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} does not end in .png", "the picture is a PNG: give a "
                        "path such as preview.png")
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists", "choose another --out, or delete it first")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: there is no folder {out.parent}",
                        "create it, or choose another --out")


def cmd_runs(args: argparse.Namespace) -> int:
    from digitsjax.apps.runs import find_workdirs, runs_table, summarize

    print(runs_table([summarize(workdir) for workdir in find_workdirs(args.folder)]))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from digitsjax.apps.runs import compare
    from digitsjax.run.workdir import Workdir

    plot = args.output or args.workdirs[0] / "plots" / "compare.png"
    table, path = compare([Workdir.open(workdir) for workdir in args.workdirs], plot)
    print(table)
    print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitsjax.apps.evaluate import evaluate_trained
    from digitsjax.run.backend import summary_line
    from digitsjax.run.records import format_spread
    from digitsjax.run.trained import load_network
    from digitsjax.run.workdir import Workdir

    workdir = Workdir.open(args.workdir)
    _start_backend_for(workdir)
    network = load_network(workdir, args.checkpoint, args.model)
    result = evaluate_trained(network, _load_data(network, args.mnist_dir))
    if args.json:
        print(json.dumps(result))
        return 0
    ensemble = (f" {format_spread(result, 'test')}" if "test_model_accuracies" in result
                else "")
    print(f"step {result['step']}  test_loss {result['test_loss']:.4f}  "
          f"test_accuracy {100 * result['test_accuracy']:.2f}%{ensemble}  "
          f"params_sha256 {result['params_sha256']}")
    for k, sha in enumerate(result.get("model_params_sha256", [])):
        print(f"  model {k} (seed {network.pipeline.seed + k})  test_loss "
              f"{result['test_model_losses'][k]:.4f}  test_accuracy "
              f"{100 * result['test_model_accuracies'][k]:.2f}%  params_sha256 {sha}")
    print("accuracy per digit:  " + "  ".join(
        f"{digit}: {100 * accuracy:.1f}%"
        for digit, accuracy in enumerate(result["per_class_accuracy"])))
    print("confusion matrix (rows: true digit, columns: predicted digit):")
    print("      " + "".join(f"{digit:>6}" for digit in range(10)))
    for digit, row in enumerate(result["confusion_matrix"]):
        print(f"{digit:>6}" + "".join(f"{count:>6}" for count in row))
    print(f"computed on: {summary_line(result)}")
    return 0


def _start_backend_for(workdir: Workdir) -> None:
    """Start JAX for `workdir`'s recorded pipeline (its determinism first, as `load_network`
    does), so that a platform JAX cannot start is one line before anything loads."""
    from digitsjax.run.backend import start_backend

    start_backend(workdir.pipeline.train.deterministic)


def _load_data(network: Network, mnist_dir: str | None) -> MNIST:
    from digitsjax.core.data import load_mnist

    return load_mnist(network.pipeline.data, mnist_dir)


def cmd_predict(args: argparse.Namespace) -> int:
    """Every good file is answered; each bad one is its own error line, in argument order,
    and any bad file makes the exit status 2."""
    from digitsjax.apps.predict import predict_files
    from digitsjax.run.trained import load_network
    from digitsjax.run.workdir import Workdir

    def load() -> Network:
        workdir = Workdir.open(args.workdir)
        _start_backend_for(workdir)
        return load_network(workdir, args.checkpoint, args.model)

    network, answers = predict_files(args.images, load)
    for answer in answers:
        if answer.error is not None:
            if args.debug:
                traceback.print_exception(answer.error)
            print(f"digitsjax: error: {answer.error.render(COMMAND_LINE)}", file=sys.stderr,
                  flush=True)
        elif not args.json and answer.prediction is not None:
            top = "  ".join(f"{d}: {100 * q:5.1f}%" for d, q in answer.prediction.top(3))
            print(f"{answer.path}: {answer.prediction.digit}    ({top})", flush=True)
    if args.json:
        print(json.dumps({"step": network.step if network else None,
                          "predictions": [answer.to_json(COMMAND_LINE) for answer in answers]}))
    return EXIT_USER_ERROR if any(answer.error for answer in answers) else 0


def cmd_plots(args: argparse.Namespace) -> int:
    from digitsjax.apps import sweep

    if sweep.is_sweep(args.workdir) and args.point is None:
        paths = sweep.write_summary(args.workdir, plots=True)
    else:
        paths = _plot_network(args)
    for path in paths:
        print(path)
    return 0


def _plot_network(args: argparse.Namespace) -> list[Path]:
    """A workdir's plots into DIR/plots/; a sweep point's, its own network and curves, into
    SWEEPDIR/plots/point-N/."""
    from digitsjax.apps.plots import PLOTS_DIR, write_plots
    from digitsjax.apps.sweep import point_name, refuse_program
    from digitsjax.run.records import model_record, read_metrics
    from digitsjax.run.trained import load_network
    from digitsjax.run.workdir import Workdir

    out, title = args.workdir / PLOTS_DIR, None
    if args.point is not None:
        out = args.sweep_dir / PLOTS_DIR / f"point-{args.point}"
        name = point_name(args.sweep_dir, args.point)
        title = f"{args.sweep_dir.name}, point {args.point}: {name}"
    workdir = Workdir.open(args.workdir)
    if args.model is None and workdir.program.is_sweep:
        refuse_program(workdir.path)
    _start_backend_for(workdir)
    network = load_network(workdir, args.checkpoint, args.model)
    records = read_metrics(workdir.path)
    if args.model is not None:
        records = [model_record(r, args.model) for r in records]
    return write_plots(out, network, _load_data(network, args.mnist_dir), records,
                       title or network.pipeline.name)


def cmd_export(args: argparse.Namespace) -> int:
    from digitsjax.apps.export import default_output, export_trained
    from digitsjax.run.trained import load_network
    from digitsjax.run.workdir import Workdir

    workdir = Workdir.open(args.workdir)
    _start_backend_for(workdir)
    network = load_network(workdir, args.checkpoint, args.model)
    name = "model" if args.point is None else f"point-{args.point}"
    done = export_trained(network, args.format,
                          args.output or default_output(args.workdir, args.format, name))
    print(done.path)
    print(done.sidecar)
    size = (f"{done.size / 1e6:.1f} MB" if done.size >= 1e6 else f"{done.size / 1e3:.1f} kB")
    difference = done.check.get("max_abs_probability_difference")
    checked = (f"  checked: probabilities within {difference:.1g} of digitsjax's on "
               f"{done.check['probe_images']} probe images ({done.check['by']})"
               if difference is not None else "")
    print(f"{done.format}  {size}  step {done.step}  params_sha256 {done.params_sha256}"
          f"{checked}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from digitsjax.apps.sweep import SUMMARY_MARKDOWN, make_variants, read_grid, run_sweep
    from digitsjax.core.config import load_pipeline
    from digitsjax.run.backend import start_backend

    base = load_pipeline(args.pipeline, args.overrides, for_sweep=True)
    grid = read_grid(args.pipeline, args.grid)
    make_variants(base, grid)  # every variant is checked before JAX starts
    start_backend(base.train.deterministic)
    sweep_dir = args.workdir or DEFAULT_WORKDIR_ROOT / base.name
    paths = run_sweep(base, grid, sweep_dir, mnist_dir=args.mnist_dir, restart=args.restart,
                      progress=sys.stderr.isatty(), separate=args.separate,
                      max_models=_models_per_program(args.max_models_per_program))
    print((sweep_dir / SUMMARY_MARKDOWN).read_text(), end="")
    for path in paths:
        print(path)
    return 0


def _models_per_program(flag: int | None) -> Callable[[Pipeline, int], int]:
    """The sweep's cap on models per program: the flag's, or what memory holds (said aloud)."""
    from digitsjax.core import sharding
    from digitsjax.run.resources import max_models_that_fit

    def cap(pipeline: Pipeline, wanted: int) -> int:
        if flag is not None:
            return min(flag, wanted)
        fit = max_models_that_fit(pipeline, sharding.data_mesh(), wanted)
        if fit < wanted:
            print(f"sweep: {wanted} points share a program; memory holds {fit} at a time "
                  "(--max-models-per-program sets it)")
        return fit
    return cap


def cmd_serve(args: argparse.Namespace) -> int:
    from digitsjax.apps.serve import Limits, make_server, serve_forever
    from digitsjax.run.trained import load_network
    from digitsjax.run.workdir import Workdir

    limits = Limits(max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels,
                    timeout_seconds=args.timeout)
    workdir = Workdir.open(args.workdir)
    _start_backend_for(workdir)
    server = make_server(load_network(workdir, args.checkpoint, args.model),
                         args.host, args.port, limits)
    serve_forever(server, echo=lambda line: print(line, flush=True))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from digitsjax.apps.verify import verify_workdir
    from digitsjax.run.workdir import Workdir

    progress = (lambda line: print(line, file=sys.stderr)) if args.json else print
    workdir = Workdir.open(args.workdir)
    _start_backend_for(workdir)
    result = verify_workdir(workdir, mnist_dir=args.mnist_dir, echo=progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.reproduced:
        print(f"reproduced: params_sha256 {result.recorded_sha256} at step {result.step}, "
              "bit for bit")
    else:
        print(f"NOT reproduced at step {result.step}: params_sha256 recorded "
              f"{result.recorded_sha256}, replayed {result.replayed_sha256}")
        if result.first_divergent_epoch is not None:
            print(f"metrics first differ at epoch {result.first_divergent_epoch}")
        print("manifest differences: " + ("; ".join(result.manifest_differences) or
                                          "none (same versions and platform)"))
    return 0 if result.reproduced else EXIT_NOT_REPRODUCED


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "verify": cmd_verify,
            "predict": cmd_predict, "plots": cmd_plots, "sweep": cmd_sweep, "serve": cmd_serve,
            "export": cmd_export, "runs": cmd_runs, "compare": cmd_compare,
            "augment-preview": cmd_augment_preview}


def main(argv: list[str] | None = None) -> int:
    """Run one command; however the process ends, it says so in one line at most.

    Ctrl-C outside the training loop (which checkpoints first, see preemption.py) ends with
    `digitsjax: interrupted` and 130. A reader that stops reading (`digitsjax ... | head -1`)
    ends it with 141, silently, as `cat` or `grep` end: the output was cut short, which a
    `set -o pipefail` script should see, and which must differ from 0, 1 and 2. Python ignores
    SIGPIPE, so the closed pipe is a BrokenPipeError at a write or at the flush below; stdout
    then goes to /dev/null, so that Python's own flush at exit has nothing left to complain of.
    A Ctrl-C has three more ways to escape as a traceback or a crash while JAX loads and the
    process exits; `_parse_and_load_jax`, `_keep_interrupts` and `_exit_with_status` close them.
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
        print("digitsjax: interrupted", file=sys.stderr)
        _exit_with_status()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        if sys.unraisablehook is ours:  # one set meanwhile (run.checkpoint's) stays; it calls ours
            sys.unraisablehook = previous_hook
        atexit.unregister(_end_at_once_on_ctrl_c)
        atexit.register(_end_at_once_on_ctrl_c)  # last, so that it runs first


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
        args = build_parser().parse_args(argv)
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


def _exit_with_status() -> None:
    """Make the process end with the status `main` returns after it handled a Ctrl-C.

    Under `python -m`, CPython (3.11 measured) ends the process by SIGINT, whatever the status,
    when a KeyboardInterrupt ended an `exec` of source text, even one caught later; dataclasses
    and named tuples are made that way while modules load. Every `exec` of source text starts
    by forgetting that, and this one ends normally.
    """
    exec("None")  # source text on purpose, see above


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
        _resolve_point(args)
        return COMMANDS[args.command](args)
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
