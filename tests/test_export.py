"""`digitsjax export`: the network used elsewhere gives digitsjax's answers on the MNIST test set.

Each format is read back the way a user elsewhere would: the npz by a forward pass written here
in plain NumPy from the npz and its JSON alone, the StableHLO file by `jax.export.deserialize`
in a process that never imports digitsjax, the ONNX file by ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitsjax.apps.export import FORMATS, export_trained
from digitsjax.cli import EXPORT_FORMATS
from digitsjax.core.program import Program
from digitsjax.errors import UserError
from digitsjax.files import LEDGER, OwnedFolder
from digitsjax.main import main
from digitsjax.run.trained import load_network

from .conftest import TINY, run_cli, train_mnist_mlp
from .filesystem import refusing_writes_of

ONNX_MISSING = [name for name in ("jax2onnx", "onnxruntime")
                if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(
    bool(ONNX_MISSING),
    reason=f"needs {' and '.join(ONNX_MISSING)}: pip install 'digitsjax[export]'")
PROBABILITY_TOLERANCE = 1e-5
# K = 2 models on 1,000 training images for one epoch: an ensemble in seconds.
ENSEMBLE = (*TINY, "train.epochs=1", "train.num_models=2")


@pytest.fixture(scope="module")
def ensemble_workdir(tmp_path_factory, mnist_dir) -> Path:
    return train_mnist_mlp(tmp_path_factory.mktemp("ensemble"), ENSEMBLE, mnist_dir)


@pytest.fixture(params=["one_model", "two_models"])
def workdir(request) -> Path:
    return request.getfixturevalue(
        "trained_workdir" if request.param == "one_model" else "ensemble_workdir")


def digitsjax_probabilities(workdir: Path, images: np.ndarray) -> np.ndarray:
    return load_network(workdir).probabilities(images)


def assert_same_answers(got: np.ndarray, want: np.ndarray) -> None:
    difference = float(np.max(np.abs(got - want)))
    agreement = float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
    print(f"max |probability difference| {difference:.3g}, predictions agree {agreement:.2%}")
    assert got.shape == want.shape
    assert difference <= PROBABILITY_TOLERANCE
    assert agreement == 1.0


ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "linear": lambda x: x,
               "sigmoid": lambda x: 1 / (1 + np.exp(-x))}


def numpy_classify(arrays, card: dict, images: np.ndarray) -> np.ndarray:
    """The forward pass from the npz's arrays and its JSON's description, in plain NumPy."""
    network = card["network"]
    count = len(network["layer_sizes"]) - 1
    models = network["num_models"]

    def one_model(k: int | None) -> np.ndarray:
        x = images
        for i in range(count):
            w, b = arrays[f"w{i}"], arrays[f"b{i}"]
            if k is not None:
                w, b = w[k], b[k]
            name = network["activation"] if i < count - 1 else network["output_activation"]
            x = ACTIVATIONS[name](x @ w + b)
        if network["probabilities"] == "softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return x / x.sum(axis=1, keepdims=True)

    if models == 1:
        return one_model(None)
    return np.mean([one_model(k) for k in range(models)], axis=0)


def test_npz_and_its_json_alone_give_digitsjaxs_answers_in_plain_numpy(workdir, mnist, tmp_path):
    done = export_trained(load_network(workdir), "npz", tmp_path / "model.npz")
    card = json.loads(done.sidecar.read_text())
    assert card["network"]["matmul_precision"] == "float32"
    with np.load(done.path) as arrays:
        assert {name: list(a.shape) for name, a in arrays.items()} == card["arrays"]
        digest = hashlib.sha256()
        for i in range(len(card["network"]["layer_sizes"]) - 1):
            for name in (f"b{i}", f"w{i}"):
                digest.update(np.ascontiguousarray(arrays[name]).tobytes())
        assert digest.hexdigest() == card["params_sha256"] == done.params_sha256
        got = numpy_classify(arrays, card, mnist.test_images)
    assert card["sha256"] == hashlib.sha256(done.path.read_bytes()).hexdigest()
    assert_same_answers(got, digitsjax_probabilities(workdir, mnist.test_images))


WITHOUT_DIGITSJAX = """
import sys
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exported.call(images)))
print(exported.in_avals[0].shape, np.asarray(exported.call(images[:1])).shape)
assert not any(name.startswith("digitsjax") for name in sys.modules), "imported digitsjax"
"""


def test_stablehlo_runs_in_plain_jax_for_any_batch_size(workdir, mnist, tmp_path):
    done = export_trained(load_network(workdir), "stablehlo", tmp_path / "model.stablehlo")
    card = json.loads(done.sidecar.read_text())
    assert {"cpu", "cuda", "tpu"} <= set(card["platforms"])
    np.save(tmp_path / "images.npy", mnist.test_images)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DIGITSJAX, str(done.path), str(tmp_path / "images.npy"),
         str(tmp_path / "probabilities.npy")], capture_output=True, text=True, cwd=tmp_path,
        timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(N,", "784)", "(1,", "10)"]
    assert_same_answers(np.load(tmp_path / "probabilities.npy"),
                        digitsjax_probabilities(workdir, mnist.test_images))


@needs_onnx
def test_onnx_runs_in_onnxruntime_with_digitsjaxs_answers(workdir, mnist, tmp_path):
    import onnxruntime

    output = tmp_path / "model.onnx"
    result = run_cli("export", str(workdir), "--format", "onnx", "--output", str(output))
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "model.onnx.json").read_text())
    lines = result.stdout.splitlines()
    assert lines[:2] == [str(output), str(output) + ".json"]
    assert lines[2].startswith("onnx  ") and f"params_sha256 {card['params_sha256']}" in lines[2]
    assert len(lines) == 3 and result.stderr == ""
    session = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("images", ["N", 784])]
    got = session.run(None, {"images": mnist.test_images})[0]
    assert_same_answers(got, digitsjax_probabilities(workdir, mnist.test_images))


def test_the_default_output_is_in_the_workdir_and_only_an_earlier_export_is_replaced(
        trained_workdir, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    assert main(["export", str(workdir), "--format", "npz", "--checkpoint", "best"]) == 0
    path = workdir / "export" / "model.npz"
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [str(path), str(path) + ".json"]
    assert lines[2].startswith("npz  ") and "kB  step " in lines[2] and len(lines) == 3
    assert main(["export", str(workdir), "--format", "npz"]) == 0  # its own: replaced
    capsys.readouterr()
    with path.open("ab") as f:
        f.write(b"edited")
    edited = path.read_bytes()
    assert main(["export", str(workdir), "--format", "npz"]) == 2
    err = capsys.readouterr().err
    assert err == (f"digitsjax: error: {path} exists and is not an unchanged earlier export; "
                   "move it away, or choose another output path\n")
    assert path.read_bytes() == edited


@pytest.mark.parametrize("case", ["a_file", "a_folder", "a_json_beside_it"])
def test_a_users_files_are_never_overwritten(trained_workdir, tmp_path, case):
    output = tmp_path / "model.npz"
    if case == "a_file":
        output.write_bytes(b"mine")
    elif case == "a_folder":
        output.mkdir()
    else:
        (tmp_path / "model.npz.json").write_text('{"mine": true}')
    before = sorted((p.name, p.is_dir() or p.read_bytes()) for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=r"move it away|is a folder"):
        export_trained(load_network(trained_workdir), "npz", output)
    assert sorted((p.name, p.is_dir() or p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_onnx_without_its_packages_is_one_line_naming_the_extra(
        trained_workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` fails, as uninstalled
    output = tmp_path / "model.onnx"
    assert main(["export", str(trained_workdir), "--format", "onnx", "--output",
                 str(output)]) == 2
    err = capsys.readouterr().err
    assert err == ("digitsjax: error: ONNX export needs the jax2onnx and onnxruntime packages, "
                   "which are not installed; install them with pip install "
                   "'digitsjax[export]'\n")
    assert list(tmp_path.iterdir()) == []


@needs_onnx
def test_onnx_refuses_bfloat16_multiplies_that_onnx_runtime_cannot_run(trained_workdir, tmp_path):
    network = load_network(trained_workdir)
    pipeline = network.pipeline
    network = dataclasses.replace(network, program=Program(dataclasses.replace(
        pipeline, train=dataclasses.replace(pipeline.train, matmul_precision="bfloat16"))))
    with pytest.raises(UserError, match=r"bfloat16.*export it as stablehlo or npz"):
        export_trained(network, "onnx", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_offers_exactly_the_librarys_formats():
    assert tuple(FORMATS) == EXPORT_FORMATS


def test_an_export_the_filesystem_refuses_is_one_line_and_leaves_nothing(
        trained_workdir, tmp_path, capsys, monkeypatch):
    """As `--output` into a read-only folder: no half-written file, no temporary left."""
    monkeypatch.setattr(os, "replace", refusing_writes_of(".npz"))
    output = tmp_path / "model.npz"
    assert main(["export", str(trained_workdir), "--format", "npz", "--output",
                 str(output)]) == 2
    assert capsys.readouterr().err == (
        f"digitsjax: error: cannot write {output} (Read-only file system); free space or make "
        "it writable, or choose another place\n")
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_refused_naming_the_file_in_the_way(
        trained_workdir, tmp_path, capsys):
    (tmp_path / "somefile").write_text("mine")
    output = tmp_path / "somefile" / "model.npz"
    assert main(["export", str(trained_workdir), "--format", "npz", "--output",
                 str(output)]) == 2
    assert capsys.readouterr().err == (
        f"digitsjax: error: cannot write {output}: the file {tmp_path / 'somefile'} is in the "
        "way; move it away, or choose another place\n")
    assert (tmp_path / "somefile").read_text() == "mine"


def test_the_default_export_is_listed_in_the_workdirs_ledger_and_adopts_an_earlier_one(
        trained_workdir, tmp_path):
    workdir = shutil.copytree(trained_workdir, tmp_path / "run")
    assert main(["export", str(workdir), "--format", "npz"]) == 0
    listed = {"export/", "export/model.npz", "export/model.npz.json"}
    assert listed <= OwnedFolder(workdir).written()
    (workdir / LEDGER).unlink()  # as an export written before workdirs kept a ledger
    assert main(["export", str(workdir), "--format", "npz"]) == 0  # unchanged: replaced
    assert {"export/model.npz", "export/model.npz.json"} <= OwnedFolder(workdir).written()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_export_into_a_read_only_folder_is_one_line(trained_workdir, tmp_path, capsys):
    tmp_path.chmod(0o555)
    try:
        assert main(["export", str(trained_workdir), "--format", "npz", "--output",
                     str(tmp_path / "model.npz")]) == 2
    finally:
        tmp_path.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith("digitsjax: error: cannot write ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
