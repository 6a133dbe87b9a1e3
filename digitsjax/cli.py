"""The `digitsjax` command: a thin layer of argument parsing over the library.

Each command reads its arguments (digitsjax.arguments: what they name), calls the library and
prints the text the library gives back. The process around a command, its one-line errors, exit
statuses, signals and closed pipes, is digitsjax.main's.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from digitsjax import arguments
from digitsjax.errors import COMMAND_LINE
from digitsjax.files import DEFAULT_WORKDIR_ROOT, default_workdir

if TYPE_CHECKING:  # the commands import the library lazily, to start fast
    from digitsjax.core.data import MNIST
    from digitsjax.run.trained import Network

EXIT_NOT_REPRODUCED = 1
EXIT_USER_ERROR = 2
EXPORT_FORMATS = ("onnx", "stablehlo", "npz")
"""`digitsjax export --format`: the keys of apps.export.FORMATS (not imported: it loads JAX)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"digitsjax: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="digitsjax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"digitsjax {arguments.version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training_commands(commands)
    _add_augment_preview_command(commands)
    _add_trained_network_commands(commands)
    _add_serve_command(commands)
    return parser


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
                       metavar="KEY=[V,...]", help="as a [sweep] table line (which it adds to): "
                       "model.hidden=[[30],[100]], a range {log_uniform=[1e-4,1e-1]}, samples=16")
    sweep.add_argument("--workdir", type=Path,
                       help="sweep folder, one workdir per variant inside "
                       "(default: checkpoints/<pipeline name>)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a key of every variant")
    sweep.add_argument("--restart", action="store_true",
                       help="discard the variants' checkpoints and start over")
    sweep.add_argument("--max-models-per-program", type=arguments.positive(int), metavar="N",
                       help="train at most N points in one program (default: as many as "
                       "the device's memory holds)")
    sweep.add_argument("--separate", action="store_true",
                       help="train every point as its own run, one after another")
    _add_mnist_dir(sweep)
    _add_cluster(sweep)

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
        "verify", help="replay a finished workdir's pipeline, or a sweep's whole search; check "
        "it ends bit for bit the same")
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
    preview.add_argument("--count", type=arguments.preview_count, metavar="N",
                         default=arguments.PREVIEW_COUNT,
                         help="digits shown, at most one batch (default: %(default)s)")
    _add_mnist_dir(preview)
    preview.set_defaults(workdir=None)  # read by pipeline_and_workdir; nothing is written there


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
    serve.add_argument("--port", type=arguments.port, default=8000, help="0 picks a free port")
    from digitsjax.apps.serve import Limits  # light: numpy and Pillow, not JAX

    defaults = Limits()
    limits = serve.add_argument_group("limits per request (what a bad client can cost)")
    limits.add_argument("--max-body-bytes", type=arguments.positive(int), metavar="N",
                        default=defaults.max_body_bytes,
                        help="larger requests get 413 (default: %(default)s)")
    limits.add_argument("--max-pixels", type=arguments.positive(int), metavar="N",
                        default=defaults.max_pixels,
                        help="larger images get 422 (default: %(default)s)")
    limits.add_argument("--timeout", type=arguments.positive(float), metavar="SECONDS",
                        default=defaults.timeout_seconds,
                        help="close connections silent for this long (default: %(default)s)")


def _add_checkpoint(parser: argparse.ArgumentParser, point: bool = True) -> None:
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    if point:
        parser.add_argument("--point", type=arguments.point_number, metavar="N",
                            help="in a sweep folder: its point N (row N of sweep.csv, from 0)")


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
    pipeline, workdir = arguments.pipeline_and_workdir(args)  # a mistake shows before JAX loads

    from digitsjax.run import cluster
    from digitsjax.run.backend import start_backend
    from digitsjax.run.loop import train_pipeline

    cluster.initialize(cluster.resolve_cluster(args.coordinator_address, args.num_processes,
                                               args.process_id))
    start_backend(pipeline.train.deterministic)  # after joining the cluster, as JAX requires
    train_pipeline(pipeline, workdir, mnist_dir=args.mnist_dir, restart=args.restart,
                   progress=sys.stderr.isatty(), echo=arguments.say)
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Step 0's batch as loaded and as training distorts it: no training, no workdir."""
    pipeline, _ = arguments.pipeline_and_workdir(args)  # a mistake shows before JAX loads
    out = args.out or Path(f"{pipeline.name.replace('/', '-')}-augment.png")
    arguments.check_new_png(out)

    from digitsjax.apps.plots import augmentation_sample, augmentation_title, plot_augmentation
    from digitsjax.core import augment
    from digitsjax.run.backend import start_backend
    from digitsjax.run.mnist import load_mnist

    start_backend(pipeline.train.deterministic)
    data = load_mnist(pipeline.data, args.mnist_dir)
    before, after = augmentation_sample(pipeline, data.train_images, args.count)
    plot_augmentation(before, after, out, augmentation_title(pipeline, len(before)))
    if not augment.active(pipeline.augment):
        print(f"digitsjax: [augment] is off in {args.pipeline} (every strength is 0): the "
              "lower rows repeat the upper ones; turn it on with e.g. "
              "--set augment.rotation=15 --set augment.elastic_alpha=34", file=sys.stderr)
    print(out)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """The table of the runs it could read; each other run is one error line, and status 2."""
    from digitsjax.apps.runs import list_runs, runs_table

    summaries, unreadable = list_runs(args.folder)
    if summaries or not unreadable:
        print(runs_table(summaries))
    for error in unreadable.values():
        print(f"digitsjax: error: {error.render(COMMAND_LINE)}", file=sys.stderr)
    return EXIT_USER_ERROR if unreadable else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from digitsjax.apps.runs import compare
    from digitsjax.run.workdir import Workdir

    table, path = compare([Workdir.open(workdir) for workdir in args.workdirs], args.output)
    print(table)
    print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitsjax.apps.evaluate import evaluate_trained, report_lines

    network = arguments.named_network(args)
    result = evaluate_trained(network, _load_data(network, args.mnist_dir))
    _print_lines([json.dumps(result)] if args.json
                 else report_lines(result, network.pipeline.seed))
    return 0


def _print_lines(lines: list[str]) -> None:
    print("\n".join(lines))


def _load_data(network: Network, mnist_dir: str | None) -> MNIST:
    from digitsjax.run.mnist import load_mnist

    return load_mnist(network.pipeline.data, mnist_dir)


def cmd_predict(args: argparse.Namespace) -> int:
    """Every good file is answered; each bad one is its own error line, in argument order,
    and any bad file makes the exit status 2."""
    from digitsjax.apps.predict import answers_json, predict_files, prediction_line

    network, answers = predict_files(args.images, lambda: arguments.named_network(args))
    for answer in answers:
        if answer.error is not None:
            if args.debug:
                traceback.print_exception(answer.error)
            print(f"digitsjax: error: {answer.error.render(COMMAND_LINE)}", file=sys.stderr,
                  flush=True)
        elif not args.json:
            print(prediction_line(answer), flush=True)
    if args.json:
        print(json.dumps(answers_json(network, answers, COMMAND_LINE)))
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
    from digitsjax.apps.plots import write_plots
    from digitsjax.apps.sweep import point_name, refuse_program, sweep_folder
    from digitsjax.run.records import model_record, read_metrics
    from digitsjax.run.workdir import PLOTS_DIR

    workdir = arguments.named_workdir(args)
    folder, title = workdir.files, None
    out = folder.path / PLOTS_DIR
    if args.point is not None:
        folder = sweep_folder(args.sweep_dir)
        out = folder.path / PLOTS_DIR / f"point-{args.point}"
        name = point_name(args.sweep_dir, args.point)
        title = f"{args.sweep_dir.name}, point {args.point}: {name}"
    if args.model is None:
        refuse_program(workdir)
    network = arguments.named_network(args, workdir)
    records = read_metrics(workdir.path)
    if args.model is not None:
        records = [model_record(r, args.model) for r in records]
    return write_plots(out, network, _load_data(network, args.mnist_dir), records,
                       title or network.pipeline.name, folder)


def cmd_export(args: argparse.Namespace) -> int:
    from digitsjax.apps.export import export_trained, summary_lines

    workdir = arguments.named_workdir(args)
    network = arguments.named_network(args, workdir)
    name = "model" if args.point is None else f"point-{args.point}"
    done = export_trained(network, args.format, args.output, workdir=workdir, name=name)
    _print_lines(summary_lines(done))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from digitsjax.apps.sweep import SUMMARY_MARKDOWN, make_variants, read_grid, run_sweep
    from digitsjax.core.config import load_pipeline
    from digitsjax.run import cluster
    from digitsjax.run.backend import start_backend

    base = load_pipeline(args.pipeline, args.overrides, for_sweep=True)
    grid = read_grid(args.pipeline, args.grid)
    make_variants(base, grid)  # every variant is checked before JAX starts
    cluster.initialize(cluster.resolve_cluster(args.coordinator_address, args.num_processes,
                                               args.process_id))
    start_backend(base.train.deterministic)  # after joining the cluster, as JAX requires
    sweep_dir = args.workdir or default_workdir(base.name)
    paths = run_sweep(base, grid, sweep_dir, mnist_dir=args.mnist_dir, restart=args.restart,
                      progress=sys.stderr.isatty(), separate=args.separate, echo=arguments.say,
                      max_models=arguments.models_per_program(args.max_models_per_program))
    if not cluster.is_primary():  # process 0 wrote the summary, and says it
        return 0
    print((sweep_dir / SUMMARY_MARKDOWN).read_text(), end="")
    for path in paths:
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from digitsjax.apps.serve import Limits, make_server, serve_forever

    limits = Limits(max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels,
                    timeout_seconds=args.timeout)
    server = make_server(arguments.named_network(args), args.host, args.port, limits)
    serve_forever(server, echo=lambda line: print(line, flush=True))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from digitsjax.apps.verify import summary_lines, verify_folder

    progress = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = verify_folder(args.workdir, mnist_dir=args.mnist_dir, echo=progress)
    _print_lines([json.dumps(result.to_dict())] if args.json else summary_lines(result))
    return 0 if result.reproduced else EXIT_NOT_REPRODUCED


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "verify": cmd_verify,
            "predict": cmd_predict, "plots": cmd_plots, "sweep": cmd_sweep, "serve": cmd_serve,
            "export": cmd_export, "runs": cmd_runs, "compare": cmd_compare,
            "augment-preview": cmd_augment_preview}


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command line's command (in a sweep folder, on its `--point`); its exit
    status. Errors are the caller's to render (digitsjax.main)."""
    arguments.resolve_point(args)
    return COMMANDS[args.command](args)
