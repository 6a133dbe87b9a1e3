"""Everything a user can get wrong ends in one line: `digitsjax: error: <the problem>; <the fix>`,
exit status 2, no traceback (`--debug` shows it). Each case runs the real command.

Tests run as root, whom file permissions do not stop; the permission cases therefore run the
command as the unprivileged user `nobody` (via util-linux `setpriv`), and the offline case in a
network namespace of its own, with no network at all (`unshare -rn`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from digitsjax.run.mnist import MNIST_FILES
from digitsjax.run.records import METRICS
from digitsjax.run.workdir import MANIFEST

from .conftest import REPO, run_cli

PIPELINE = str(REPO / "pipelines" / "mnist_mlp.toml")
TRAINED = ("--set=train.epochs=2",)  # trained_workdir's pipeline: mnist_mlp for 2 epochs
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
    if os.geteuid() == 0 else []
OFFLINE = ["unshare", "--map-root-user", "--net"]
PREPARING = ("preparing MNIST with tensorflow-datasets", "Downloading and preparing dataset")
"""Progress lines printed before an error found while preparing MNIST."""


@dataclass(frozen=True)
class Case:
    args: Callable[[SimpleNamespace], list[str]]
    problem: str
    """Part of the error line that says what is wrong."""
    fix: str
    """Part of the error line that says what to do."""
    env: Callable[[SimpleNamespace], dict[str, str]] = lambda _: {}
    prefix: list[str] = field(default_factory=list)
    prepares_mnist: bool = False


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def a_digit() -> Image.Image:
    image = Image.new("L", (120, 160), 255)
    image.paste(0, (50, 20, 70, 140))  # a thick "1"
    return image


def damage(checkpoint_dir: Path, how: Callable[[bytes], bytes]) -> None:
    """Rewrite every array file of one orbax checkpoint."""
    files = [p for p in checkpoint_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array files in {checkpoint_dir}"
    for path in files:
        path.write_bytes(how(path.read_bytes()))


def flip_a_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.fixture(scope="module")
def x(trained_workdir, mnist_dir) -> Iterator[SimpleNamespace]:
    """The inputs of every case, in a folder that `nobody` may read but not write."""
    root = Path(tempfile.mkdtemp(prefix="digitsjax-bad-input-"))
    root.chmod(0o755)
    x = SimpleNamespace(root=root, trained=trained_workdir)

    def copy_of_trained(name: str) -> Path:
        target = root / name
        shutil.copytree(trained_workdir, target)
        return target

    x.a_file = root / "a-file.txt"
    x.a_file.write_text("not a pipeline, an image or a workdir")
    x.folder = root / "a-folder"
    x.folder.mkdir()
    x.locked = root / "locked"  # nobody cannot create anything in it
    x.locked.mkdir(mode=0o555)
    x.locked.chmod(0o555)

    x.typo_toml = root / "typo.toml"
    x.typo_toml.write_text("[modle]\nhidden = [30]\n")
    x.broken_toml = root / "broken.toml"
    x.broken_toml.write_text("seed = 1\n[model\nhidden = [30]\n")
    x.binary_toml = root / "binary.toml"
    x.binary_toml.write_bytes(b"\xff\xfe\x00\x01 not text")
    x.secret_toml = root / "secret.toml"
    shutil.copy(PIPELINE, x.secret_toml)
    x.secret_toml.chmod(0o000)

    x.manual_missing = root / "manual-missing"
    x.manual_tampered = root / "manual-tampered"
    for manual in (x.manual_missing, x.manual_tampered):
        manual.mkdir()
        for name in MNIST_FILES[1:]:
            (manual / name).symlink_to(mnist_dir / name)
    (x.manual_tampered / MNIST_FILES[0]).write_bytes(
        (mnist_dir / MNIST_FILES[0]).read_bytes() + b"tampered")

    x.incompatible = copy_of_trained("incompatible")
    x.damaged_latest = copy_of_trained("damaged-latest")
    damage(x.damaged_latest / "checkpoints" / "858", flip_a_byte)
    x.truncated_latest = copy_of_trained("truncated-latest")
    damage(x.truncated_latest / "checkpoints" / "858", lambda _: b"")
    x.all_damaged = copy_of_trained("all-damaged")
    for step in ("429", "858"):
        damage(x.all_damaged / "checkpoints" / step, flip_a_byte)
    x.other_model = copy_of_trained("other-model")  # its manifest names another network
    manifest = json.loads((x.other_model / MANIFEST).read_text())
    manifest["pipeline"]["model"]["hidden"] = [64, 64]
    (x.other_model / MANIFEST).write_text(json.dumps(manifest))
    x.manifest_not_json = copy_of_trained("manifest-not-json")
    (x.manifest_not_json / MANIFEST).write_text('{"pipeline": {')
    x.manifest_not_object = copy_of_trained("manifest-not-object")
    (x.manifest_not_object / MANIFEST).write_text("[1, 2, 3]\n")
    x.metrics_damaged = copy_of_trained("metrics-damaged")
    records = (x.metrics_damaged / METRICS).read_text().splitlines()
    (x.metrics_damaged / METRICS).write_text("\n".join(["{oops", *records[1:]]) + "\n")
    x.unfinished = copy_of_trained("unfinished")
    shutil.rmtree(x.unfinished / "checkpoints" / "858")

    x.text_image = x.a_file
    x.empty_image = root / "empty.png"
    x.empty_image.write_bytes(b"")
    x.truncated_png = root / "truncated.png"
    whole = png(a_digit())
    x.truncated_png.write_bytes(whole[:len(whole) // 2])
    x.truncated_jpeg = root / "truncated.jpg"
    jpeg = png(a_digit().convert("RGB"), "JPEG")
    x.truncated_jpeg.write_bytes(jpeg[:len(jpeg) // 2])
    x.gif = root / "digit.gif"
    x.gif.write_bytes(png(a_digit(), "GIF"))
    x.blank_image = root / "blank.png"
    x.blank_image.write_bytes(png(Image.new("L", (64, 64), 255)))
    x.huge_image = root / "huge.png"  # 40,008,000 pixels in 40 kB: over the 40 M limit
    x.huge_image.write_bytes(png(Image.fromarray(np.full((5001, 8000), 255, np.uint8))))
    x.digit_image = root / "digit.png"
    x.digit_image.write_bytes(png(a_digit()))
    x.secret_image = root / "secret.png"
    shutil.copy(x.digit_image, x.secret_image)
    x.secret_image.chmod(0o000)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        x.busy_port = str(busy.getsockname()[1])
        yield x
    shutil.rmtree(root)


def fresh_tfds(x: SimpleNamespace, name: str) -> dict[str, str]:
    """An empty tfds data dir: MNIST must be prepared, which is where these faults show."""
    return {"TFDS_DATA_DIR": str(x.root / f"tfds-{name}")}


def train(*args: str) -> Callable[[SimpleNamespace], list[str]]:
    """`train` with mnist_mlp and a throwaway workdir, plus `args`."""
    return lambda x: train_into_scratch(x, *args)


def train_into_scratch(x: SimpleNamespace, *args: str) -> list[str]:
    return ["train", PIPELINE, "--workdir", str(x.root / "unused"), *args]


CASES = {
    # The pipeline: its keys, types, ranges and choices.
    "unknown key": Case(train("--set", "model.hiden=[30]"), "unknown key 'model.hiden'",
                        "did you mean 'model.hidden'?"),
    "unknown section in the file": Case(lambda x: ["train", str(x.typo_toml)],
                                        "unknown key 'modle'", "did you mean 'model'?"),
    "wrong type": Case(train("--set", "train.batch_size='128'"), "'train.batch_size'",
                       "must be int, got str '128'"),
    "learning rate 0": Case(train("--set", "optimizer.learning_rate=0"),
                            "'optimizer.learning_rate'", "must be > 0, got 0.0"),
    "negative learning rate": Case(train("--set", "optimizer.learning_rate=-0.1"),
                                   "'optimizer.learning_rate'", "must be > 0, got -0.1"),
    "batch size 0": Case(train("--set", "train.batch_size=0"), "'train.batch_size'",
                         "must be between 1 and 55000"),
    "layer size 0": Case(train("--set", "model.hidden=[128, 0]"), "'model.hidden[1]'",
                         "must be between 1 and 65536, got 0"),
    "unknown activation": Case(train("--set", "model.activation=relu6"),
                               "'model.activation' is 'relu6'", "did you mean 'relu'?"),
    "unknown optimizer": Case(train("--set", "optimizer.name=adma"),
                              "'optimizer.name' is 'adma'", "did you mean 'adam'?"),
    "unknown loss": Case(train("--set", "train.loss=hinge"), "'train.loss' is 'hinge'",
                         "choose one of softmax_cross_entropy, quadratic"),
    "--set without a value": Case(train("--set", "train.epochs"), "override 'train.epochs'",
                                  "must look like section.key=value"),
    "not TOML": Case(lambda x: ["train", str(x.broken_toml)], "is not valid TOML",
                     "(at line 2, column"),
    "seed beyond 32 bits": Case(train("--set", f"seed={2**70}"),
                                "'seed' must be between 0 and 4294967295", f"got {2**70}"),
    "more steps than the step counter holds": Case(
        train("--set", "train.epochs=1000000000"), "'train.epochs' = 1000000000 makes",
        "lower train.epochs to at most 5,005,789"),
    "a name that leaves checkpoints/": Case(train("--set", "name='../../x'"),
                                            "'name' must be a plain folder name",
                                            "e.g. --set name=mnist_mlp"),
    "validation leaves less than a batch": Case(
        train("--set", "data.validation_size=59999"),
        "'data.validation_size' = 59999 leaves 1 training image",
        "lower data.validation_size to at most 59872"),
    "train a sweep": Case(lambda x: ["train", str(REPO / "pipelines" / "hidden_sizes.toml")],
                          "has a [sweep] table", "run them with `digitsjax sweep"),
    "a grid key twice": Case(lambda x: ["sweep", PIPELINE, "--grid", "seed=[0]",
                                        "--grid", "seed=[1]"],
                             "--grid 'seed' is given twice", "list all its values in one"),
    # The pipeline file itself.
    "missing pipeline file": Case(lambda x: ["train", str(x.root / "nope.toml")],
                                  "nope.toml not found", "pass a path such as"),
    "unreadable pipeline file": Case(lambda x: ["train", str(x.secret_toml)],
                                     "cannot read pipeline file", "check its permissions",
                                     prefix=NOBODY),
    "pipeline is a folder": Case(lambda x: ["train", str(x.folder)], "is a folder",
                                 "pass a path such as"),
    "pipeline is not text": Case(lambda x: ["train", str(x.binary_toml)], "is not UTF-8 text",
                                 "pass a path such as"),
    # The workdir.
    "unwritable workdir": Case(lambda x: ["train", PIPELINE, "--workdir", str(x.locked / "run")],
                               "is not writable (Permission denied)",
                               "choose another with --workdir", prefix=NOBODY),
    "workdir is a file": Case(lambda x: ["train", PIPELINE, "--workdir", str(x.a_file)],
                              "is a file, not a folder", "choose another with --workdir"),
    "workdir inside a file": Case(lambda x: ["train", PIPELINE, "--workdir",
                                             str(x.a_file / "run")],
                                  "is not writable (Not a directory)",
                                  "choose another with --workdir"),
    # MNIST.
    "manual dir missing a file": Case(
        lambda x: train_into_scratch(x, "--mnist-dir", str(x.manual_missing)),
        f"lacks {MNIST_FILES[0]}", "pass --mnist-dir DIR",
        env=lambda x: fresh_tfds(x, "missing"), prepares_mnist=True),
    "manual dir with a wrong checksum": Case(
        lambda x: train_into_scratch(x, "--mnist-dir", str(x.manual_tampered)),
        f"{MNIST_FILES[0]} has the wrong sha256", "replace it with a genuine copy",
        env=lambda x: fresh_tfds(x, "tampered"), prepares_mnist=True),
    "offline without a manual dir": Case(
        train(), "cannot reach storage.googleapis.com", "pass --mnist-dir DIR",
        env=lambda x: fresh_tfds(x, "offline") | {"DIGITSJAX_MNIST_DIR": ""},
        prefix=OFFLINE, prepares_mnist=True),
    "unwritable tfds data dir": Case(
        train(), "could not prepare MNIST", "set $TFDS_DATA_DIR",
        env=lambda x: {"TFDS_DATA_DIR": str(x.a_file / "tfds")}, prepares_mnist=True),
    # Workdirs and checkpoints.
    "incompatible checkpoint": Case(
        lambda x: ["train", PIPELINE, "--workdir", str(x.incompatible), *TRAINED, "--set=seed=1"],
        "holds checkpoints of a different pipeline (seed: 0 -> 1)", "pass --restart"),
    "corrupted checkpoint": Case(lambda x: ["evaluate", str(x.damaged_latest)],
                                 "checkpoint 858", "choose another with --checkpoint"),
    "truncated checkpoint": Case(lambda x: ["evaluate", str(x.truncated_latest)],
                                 "checkpoint 858", "choose another with --checkpoint"),
    "every checkpoint corrupted": Case(
        lambda x: ["train", PIPELINE, "--workdir", str(x.all_damaged), *TRAINED],
        "no checkpoint can be restored", "pass --restart to start over"),
    "checkpoint of another model": Case(lambda x: ["evaluate", str(x.other_model)],
                                        "cannot be read", "belongs to another model"),
    "not a workdir": Case(lambda x: ["evaluate", str(x.root / "nowhere")],
                          "is not a digitsjax workdir", "train into it first"),
    "workdir that is a file": Case(lambda x: ["evaluate", str(x.a_file)],
                                   "is not a digitsjax workdir", "train into it first"),
    "manifest not JSON": Case(lambda x: ["evaluate", str(x.manifest_not_json)],
                              "manifest.json is unreadable", "retrain with --restart"),
    "manifest not an object": Case(lambda x: ["evaluate", str(x.manifest_not_object)],
                                   "is not a digitsjax manifest", "retrain with --restart"),
    "damaged metrics": Case(
        lambda x: ["train", PIPELINE, "--workdir", str(x.metrics_damaged), *TRAINED],
        "metrics.jsonl line 1 is not an epoch record", "delete the line"),
    "unknown checkpoint": Case(lambda x: ["evaluate", str(x.trained), "--checkpoint", "7"],
                               "checkpoint '7' is not latest, best or one of the saved "
                               "steps", "[429, 858]"),
    "verify damaged metrics": Case(lambda x: ["verify", str(x.metrics_damaged)],
                                   "metrics.jsonl line 1 is not an epoch record",
                                   "delete the line"),  # before, not after, a replay
    "verify an unfinished run": Case(lambda x: ["verify", str(x.unfinished)],
                                     "stopped at step 429 of 858", "finish it first"),
    # Images to classify.
    "predict a non-image": Case(lambda x: ["predict", str(x.trained), str(x.text_image)],
                                "is not a PNG or JPEG image", "use a PNG or JPEG"),
    "predict an empty file": Case(lambda x: ["predict", str(x.trained), str(x.empty_image)],
                                  "empty.png is not a PNG or JPEG image", "use a PNG or JPEG"),
    "predict a truncated PNG": Case(
        lambda x: ["predict", str(x.trained), str(x.truncated_png)],
        "truncated.png is a damaged or unsupported image", "re-save it as PNG or JPEG"),
    "predict a truncated JPEG": Case(
        lambda x: ["predict", str(x.trained), str(x.truncated_jpeg)],
        "truncated.jpg is a damaged or unsupported image", "re-save it as PNG or JPEG"),
    "predict a GIF": Case(lambda x: ["predict", str(x.trained), str(x.gif)],
                          "digit.gif is not a PNG or JPEG image", "use a PNG or JPEG"),
    "predict a huge image": Case(lambda x: ["predict", str(x.trained), str(x.huge_image)],
                                 "is 8000x5001 pixels, more than 40,000,000",
                                 "scale it down first"),
    "predict a blank image": Case(lambda x: ["predict", str(x.trained), str(x.blank_image)],
                                  "the image is blank", "draw or photograph a digit"),
    "predict a folder": Case(lambda x: ["predict", str(x.trained), str(x.folder)],
                             "is a folder", "pass the path of a PNG or JPEG file"),
    "predict a missing file": Case(lambda x: ["predict", str(x.trained), str(x.root / "7.png")],
                                   "7.png not found", "pass the path of a PNG or JPEG file"),
    "predict an unreadable file": Case(
        lambda x: ["predict", str(x.trained), str(x.secret_image)],
        "cannot read image", "check its permissions", prefix=NOBODY),
    "predict with a missing workdir": Case(
        lambda x: ["predict", str(x.root / "nowhere"), str(x.digit_image)],
        "is not a digitsjax workdir", "train into it first"),
    # The server.
    "serve a missing workdir": Case(lambda x: ["serve", str(x.root / "nowhere")],
                                    "is not a digitsjax workdir", "train into it first"),
    "serve on a port in use": Case(lambda x: ["serve", str(x.trained), "--port", x.busy_port],
                                   "Address already in use", "pass another --port"),
    "serve on an unknown host": Case(lambda x: ["serve", str(x.trained), "--host",
                                                "no-such-host.invalid", "--port", "0"],
                                     "cannot listen on no-such-host.invalid", "check --host"),
    "serve on port 99999": Case(lambda x: ["serve", str(x.trained), "--port", "99999"],
                                "'99999' is not a port number", "see `digitsjax serve --help`"),
    "serve with a timeout of 0": Case(lambda x: ["serve", str(x.trained), "--timeout", "0"],
                                      "'0' is not a positive float",
                                      "see `digitsjax serve --help`"),
    # The command line.
    "unknown command": Case(lambda x: ["trian", PIPELINE], "invalid choice: 'trian'",
                            "see `digitsjax --help`"),
    "missing argument": Case(lambda x: ["evaluate"], "required: workdir",
                             "see `digitsjax evaluate --help`"),
    "bad grid": Case(lambda x: ["sweep", PIPELINE, "--grid", "model.hidden"],
                     "--grid 'model.hidden' must look like", "e.g. --grid model.hidden="),
}
# One case per module that raises, run again with --debug: the traceback is there on request.
DEBUG_CASES = ["unknown key", "workdir inside a file", "corrupted checkpoint",
               "predict a truncated PNG", "serve on a port in use"]


@pytest.fixture(scope="module")
def results(x) -> dict[tuple[str, bool], subprocess.CompletedProcess]:
    """Every case's command, run without and (DEBUG_CASES) with --debug, keyed (name, debug).

    The commands are independent, and most of their time goes into starting Python and
    importing JAX, so they run four at a time.
    """
    runs = [(name, False) for name in CASES] + [(name, True) for name in DEBUG_CASES]

    def run(name_and_debug: tuple[str, bool]) -> subprocess.CompletedProcess:
        case = CASES[name_and_debug[0]]
        debug = ["--debug"] if name_and_debug[1] else []
        return run_cli(*debug, *case.args(x), env=case.env(x), prefix=case.prefix)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(runs, pool.map(run, runs), strict=True))


@pytest.mark.parametrize("name", CASES)
def test_a_mistake_is_one_line_naming_the_problem_and_the_fix(name, results):
    case = CASES[name]
    result = results[name, False]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert lines and lines[-1].startswith("digitsjax: error: "), result.stderr
    before = lines[:-1]  # only MNIST's preparation may say something first
    assert all(case.prepares_mnist and line.startswith(PREPARING) for line in before), lines
    assert case.problem in lines[-1] and case.fix in lines[-1], lines[-1]
    assert lines[-1].index(case.problem) <= lines[-1].index(case.fix)


@pytest.mark.parametrize("name", DEBUG_CASES)
def test_debug_shows_the_traceback_above_the_same_line(name, results):
    result = results[name, True]
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert lines[-1].startswith("digitsjax: error: ") and CASES[name].problem in lines[-1]


def test_the_permission_cases_really_lack_permission(x):
    """As `nobody`, the files these cases use are unreadable and the folder unwritable; were
    the prefix ineffective, the cases would test nothing."""
    for path in (x.secret_toml, x.secret_image):
        denied = subprocess.run([*NOBODY, "cat", str(path)], capture_output=True, text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert subprocess.run([*NOBODY, "mkdir", str(x.locked / "run")],
                          capture_output=True).returncode != 0
