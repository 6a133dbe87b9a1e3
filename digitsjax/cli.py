"""The `digitsjax` command: a thin layer of argument parsing over the library.

Exit statuses: 0 done; 1 `verify` could not reproduce the run; 2 a `UserError` or a malformed
command line, printed as one line on stderr (`--debug` shows the traceback); 143 / 130 training
stopped by SIGTERM / SIGINT after checkpointing (see preemption.py), so re-running the same
command continues it.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from digitsjax.errors import COMMAND_LINE, UserError
from digitsjax.run.preemption import Preempted

if TYPE_CHECKING:  # the commands import the library lazily, to start fast
    from digitsjax.core.data import MNIST
    from digitsjax.run.trained import Trained

DEFAULT_WORKDIR_ROOT = Path("checkpoints")
EXIT_NOT_REPRODUCED = 1
EXIT_USER_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"digitsjax: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="digitsjax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training_commands(commands)
    _add_trained_network_commands(commands)
    _add_serve_command(commands)
    return parser


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a pipeline (continues from its checkpoints)")
    train.add_argument("pipeline", type=Path, help="a pipelines/*.toml file")
    train.add_argument("--workdir", type=Path,
                       help="output folder (default: checkpoints/<pipeline name>)")
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
    _add_mnist_dir(sweep)

    verify = commands.add_parser(
        "verify", help="replay a finished workdir's pipeline; check it ends bit for bit the same")
    verify.add_argument("workdir", type=Path)
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    _add_mnist_dir(verify)


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
                                "or a sweep)")
    plots.add_argument("workdir", type=Path, metavar="DIR")
    _add_checkpoint(plots)
    _add_mnist_dir(plots)


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


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")


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
    from digitsjax.core.config import load_pipeline

    pipeline = load_pipeline(args.pipeline, args.overrides)  # a mistake shows before JAX loads

    from digitsjax.run import cluster
    from digitsjax.run.loop import train_pipeline

    cluster.initialize(cluster.resolve_cluster(args.coordinator_address, args.num_processes,
                                               args.process_id))
    workdir = args.workdir or DEFAULT_WORKDIR_ROOT / pipeline.name
    train_pipeline(pipeline, workdir, mnist_dir=args.mnist_dir, restart=args.restart,
                   progress=sys.stderr.isatty())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitsjax.apps.evaluate import evaluate_trained
    from digitsjax.run.backend import summary_line
    from digitsjax.run.records import format_spread
    from digitsjax.run.trained import load_trained

    trained = load_trained(args.workdir, args.checkpoint)
    result = evaluate_trained(trained, _load_data(trained, args.mnist_dir))
    if args.json:
        print(json.dumps(result))
        return 0
    ensemble = (f" {format_spread(result, 'test')}" if "test_model_accuracies" in result
                else "")
    print(f"step {result['step']}  test_loss {result['test_loss']:.4f}  "
          f"test_accuracy {100 * result['test_accuracy']:.2f}%{ensemble}  "
          f"params_sha256 {result['params_sha256']}")
    for k, sha in enumerate(result.get("model_params_sha256", [])):
        print(f"  model {k} (seed {trained.pipeline.seed + k})  test_loss "
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


def _load_data(trained: Trained, mnist_dir: str | None) -> MNIST:
    from digitsjax.core.data import load_mnist

    return load_mnist(trained.pipeline.data, mnist_dir)


def cmd_predict(args: argparse.Namespace) -> int:
    from digitsjax.apps.imaging import load_digit_files

    digits = load_digit_files(args.images)  # a bad file fails before the network loads

    from digitsjax.apps.predict import Predictor

    predictor = Predictor.from_workdir(args.workdir, args.checkpoint)
    predictions = predictor.classify(digits)
    if args.json:
        print(json.dumps({"step": predictor.trained.step, "predictions": [
            {"image": str(path), "digit": p.digit, "probabilities": p.probabilities,
             "top3": [{"digit": d, "probability": q} for d, q in p.top(3)]}
            for path, p in zip(args.images, predictions, strict=True)]}))
        return 0
    for path, prediction in zip(args.images, predictions, strict=True):
        top = "  ".join(f"{d}: {100 * q:5.1f}%" for d, q in prediction.top(3))
        print(f"{path}: {prediction.digit}    ({top})")
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    from digitsjax.apps import sweep

    if sweep.is_sweep(args.workdir):
        paths = sweep.write_summary(args.workdir)
    else:
        from digitsjax.apps.plots import write_plots
        from digitsjax.run.trained import load_trained

        trained = load_trained(args.workdir, args.checkpoint)
        paths = write_plots(args.workdir, trained, _load_data(trained, args.mnist_dir))
    for path in paths:
        print(path)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from digitsjax.apps.sweep import SUMMARY_MARKDOWN, read_grid, run_sweep
    from digitsjax.core.config import load_pipeline

    base = load_pipeline(args.pipeline, args.overrides)
    grid = read_grid(args.pipeline, args.grid)
    sweep_dir = args.workdir or DEFAULT_WORKDIR_ROOT / base.name
    paths = run_sweep(base, grid, sweep_dir, mnist_dir=args.mnist_dir, restart=args.restart,
                      progress=sys.stderr.isatty())
    print((sweep_dir / SUMMARY_MARKDOWN).read_text(), end="")
    for path in paths:
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from digitsjax.apps.predict import Predictor
    from digitsjax.apps.serve import Limits, make_server, serve_forever

    limits = Limits(max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels,
                    timeout_seconds=args.timeout)
    server = make_server(Predictor.from_workdir(args.workdir, args.checkpoint),
                         args.host, args.port, limits)
    serve_forever(server, echo=lambda line: print(line, flush=True))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from digitsjax.apps.verify import verify_workdir

    progress = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = verify_workdir(args.workdir, mnist_dir=args.mnist_dir, echo=progress)
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
            "predict": cmd_predict, "plots": cmd_plots, "sweep": cmd_sweep, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from digitsjax.run import process
    from digitsjax.run.compilation_cache import enable_compilation_cache

    process.quiet_libraries()
    if not args.debug:
        process.hide_library_tracebacks()
    enable_compilation_cache()  # a second run of a pipeline skips compilation
    try:
        return COMMANDS[args.command](args)
    except Preempted as e:
        hint = "; run the same command again to continue" if args.command == "train" else ""
        print(f"digitsjax: {e}{hint}", file=sys.stderr)
        return e.exit_code
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"digitsjax: error: {e.render(COMMAND_LINE)}", file=sys.stderr)
        return EXIT_USER_ERROR
