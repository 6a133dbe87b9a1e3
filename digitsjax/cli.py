"""The `digitsjax` command: a thin layer of argument parsing over the library.

A `UserError` becomes one line on stderr and exit status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from digitsjax.errors import UserError

DEFAULT_WORKDIR_ROOT = Path("checkpoints")
EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitsjax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a pipeline (continues from its checkpoints)")
    train.add_argument("pipeline", type=Path, help="a pipelines/*.toml file")
    train.add_argument("--workdir", type=Path,
                       help="output folder (default: checkpoints/<pipeline name>)")
    train.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a pipeline key, e.g. train.epochs=3")
    train.add_argument("--restart", action="store_true",
                       help="discard the workdir's checkpoints and start over")
    _add_mnist_dir(train)

    evaluate = commands.add_parser("evaluate", help="test loss/accuracy of a trained workdir")
    evaluate.add_argument("workdir", type=Path)
    evaluate.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    _add_mnist_dir(evaluate)
    return parser


def _add_mnist_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mnist-dir", help="folder with the four MNIST .gz files, for hosts "
                        "without internet (also $DIGITSJAX_MNIST_DIR)")


def cmd_train(args: argparse.Namespace) -> int:
    from digitsjax.config import load_pipeline
    from digitsjax.run import train_pipeline

    pipeline = load_pipeline(args.pipeline, args.overrides)
    workdir = args.workdir or DEFAULT_WORKDIR_ROOT / pipeline.name
    train_pipeline(pipeline, workdir, mnist_dir=args.mnist_dir, restart=args.restart,
                   progress=sys.stderr.isatty())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitsjax.data import load_mnist, resolve_mnist_dir
    from digitsjax.run import evaluate_trained, format_spread, load_trained

    trained = load_trained(args.workdir, args.checkpoint)
    data_config = trained.pipeline.data
    data = load_mnist(data_config, resolve_mnist_dir(args.mnist_dir, data_config))
    result = evaluate_trained(trained, data)
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
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from digitsjax.compilation_cache import enable_compilation_cache

    enable_compilation_cache()  # a second run of a pipeline skips compilation
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"digitsjax: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
