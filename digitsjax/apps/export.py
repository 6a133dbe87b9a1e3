"""A trained network written out for use elsewhere: ONNX, StableHLO or NumPy arrays.

Every format holds the same function, `core.model.classify` with the checkpoint's parameters
baked in: images (N, 784) float32 in [0, 1] -> class probabilities (N, 10), of one model or
of K models' ensemble, with the multiplies at the precision the network was trained with.

- `onnx`: converted by jax2onnx (the `export` extra) from classify's primitives, with a
  symbolic batch dimension; runs in ONNX Runtime and other ONNX runtimes.
- `stablehlo`: `jax.export` of classify, serialized, for CPU, CUDA, ROCm and TPU, batch
  symbolic: `jax.export.deserialize(bytearray(data)).call(images)` in this jax or a newer one.
- `npz`: the weights and biases (w0, b0, w1, b1, ...; K models on a leading axis) for a
  forward pass written anywhere, following the recipe in the JSON beside it.

Beside each file, `FILE.json` describes it: the network, how outputs become probabilities, the
checkpoint (step, params_sha256), the file's own sha256, and the check made before writing
(the file's probabilities against digitsjax's on probe images, or the arrays' fingerprint).
An existing file is replaced only if it is an earlier export, unchanged since (its JSON
records its sha256); anything else is refused, so a user's file is never overwritten. The
default place, WORKDIR/export/, is the workdir's: what is written there is listed in its ledger
(`files.OwnedFolder`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digitsjax.core.config import Pipeline
from digitsjax.core.data import NUM_CLASSES, NUM_PIXELS
from digitsjax.core.model import classify, layer_sizes, params_sha256
from digitsjax.errors import UserError
from digitsjax.files import (
    OwnedFolder,
    check_folders_of,
    make_folders_of,
    write_atomic,
    write_json_atomic,
)
from digitsjax.run.trained import Network, fingerprints
from digitsjax.run.workdir import EXPORT_DIR, Workdir

WRITTEN_BY = "digitsjax export"
INPUT_NAME, OUTPUT_NAME, BATCH = "images", "probabilities", "N"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
"""The platforms a StableHLO export runs on."""
PROBE_IMAGES = 64
TOLERANCE = 1e-5
"""The largest difference from digitsjax's probabilities an exported file may show."""
EXTRA = "pip install 'digitsjax[export]'"


@dataclass(frozen=True)
class Format:
    """One export format: what refuses a network, how it is encoded, and how it is checked."""

    encode: Callable[[Network], tuple[bytes, dict[str, Any]]]
    """The file's bytes, and what the JSON beside it adds about the format."""
    check: Callable[[bytes, Network], dict[str, Any]]
    """Reads the bytes back and compares them with the network; raises on a mismatch."""
    refuse: Callable[[Pipeline], None] = lambda _: None
    """Raises a UserError for a network the format cannot hold, before anything is done."""


@dataclass(frozen=True)
class Exported:
    """What `export_trained` wrote."""

    format: str
    path: Path
    sidecar: Path
    size: int
    step: int
    params_sha256: str
    check: dict[str, Any]


def sidecar_path(output: Path) -> Path:
    """The JSON that describes `output`: `output` with `.json` appended."""
    return output.with_name(output.name + ".json")


def export_trained(network: Network, format_name: str, output: str | Path | None = None, *,
                   workdir: Workdir | None = None, name: str = "model") -> Exported:
    """Write `network` in `format_name` (a key of FORMATS), and its description beside it,
    each whole or not at all: to `output`, or without one into its `workdir`, as
    WORKDIR/export/NAME.FORMAT, listed in the workdir's ledger.

    Refused before anything is computed or written: a file there other than an unchanged
    earlier export, a link on the way into the workdir, a file where a folder would be.
    """
    if format_name not in FORMATS:
        raise UserError(f"there is no export format {format_name!r}",
                        f"choose one of {', '.join(FORMATS)}")
    how = FORMATS[format_name]
    how.refuse(network.pipeline)
    names = [f"{EXPORT_DIR}/{name}.{format_name}", f"{EXPORT_DIR}/{name}.{format_name}.json"]
    folder = None
    if output is None:
        if workdir is None:
            raise TypeError("export_trained needs an output path or the network's workdir")
        folder = workdir.files
        output, _ = folder.inside(names[0]), folder.inside(names[1])
    output = Path(output)
    _check_replaceable(output)
    check_folders_of(output)
    payload, details = how.encode(network)
    check = how.check(payload, network)
    description = describe(network, format_name, output, payload) | details | {"check": check}
    if folder is not None:
        _list_in(folder, names)
    else:
        make_folders_of(output)
    write_atomic(output, lambda f: f.write(payload))
    write_json_atomic(sidecar_path(output), description)
    return Exported(format=format_name, path=output, sidecar=sidecar_path(output),
                    size=len(payload), step=network.step,
                    params_sha256=description["params_sha256"], check=check)


def _list_in(folder: OwnedFolder, names: list[str]) -> None:
    """List an export and its description in the workdir's ledger and make export/: an
    unchanged earlier export there (`_check_replaceable`), one written before workdirs kept
    a ledger included."""
    folder.record(*(name for name in names if os.path.lexists(folder.inside(name))))
    folder.targets(*names)
    folder.folder(EXPORT_DIR)


def _check_replaceable(output: Path) -> None:
    """Refuse to overwrite anything but an unchanged earlier export (and its description)."""
    sidecar = sidecar_path(output)
    for path in (output, sidecar):
        if path.is_dir():
            raise UserError(f"{path} is a folder", "give the path of a file to write")
    if output.exists() and not _earlier_export(output):
        raise UserError(f"{output} exists and is not an unchanged earlier export",
                        "move it away, or choose another output path")
    if sidecar.exists() and _read_json(sidecar).get("written_by") != WRITTEN_BY:
        raise UserError(f"{sidecar} exists and was not written by {WRITTEN_BY}",
                        "move it away, or choose another output path")


def _earlier_export(output: Path) -> bool:
    record = _read_json(sidecar_path(output))
    return (record.get("written_by") == WRITTEN_BY and
            record.get("sha256") == hashlib.sha256(output.read_bytes()).hexdigest())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def describe(network: Network, format_name: str, output: Path, payload: bytes) -> dict[str, Any]:
    """The JSON written beside an export: the file, the checkpoint, the network and its use."""
    pipeline = network.pipeline
    model, train = pipeline.model, pipeline.train
    return ({"written_by": WRITTEN_BY, "digitsjax": _version("digitsjax"), "format": format_name,
             "file": output.name, "sha256": hashlib.sha256(payload).hexdigest(),
             "bytes": len(payload), "pipeline": pipeline.name, "step": network.step}
            | fingerprints(pipeline, network.params)
            | {"network": {"layer_sizes": list(layer_sizes(model)),
                           "activation": model.activation,
                           "output_activation": model.output_activation,
                           "probabilities": _probabilities(pipeline),
                           "num_models": train.num_models,
                           "matmul_precision": train.matmul_precision},
               "input": {"name": INPUT_NAME, "shape": [BATCH, NUM_PIXELS], "dtype": "float32",
                         "values": "28x28 digits row by row, white ink on black, pixel / 255"},
               "output": {"name": OUTPUT_NAME, "shape": [BATCH, NUM_CLASSES],
                          "dtype": "float32", "values": "the probability of each digit 0-9"},
               "recipe": recipe(pipeline)})


def _probabilities(pipeline: Pipeline) -> str:
    """How `core.model.probabilities` makes the last layer's outputs probabilities."""
    return "softmax" if pipeline.model.output_activation == "linear" else "normalised"


FORMULAS = {"relu": "max(x, 0)", "sigmoid": "1 / (1 + exp(-x))", "tanh": "tanh(x)",
            "linear": "x", "softmax": "exp(x) / sum(exp(x))", "normalised": "x / sum(x)"}


def recipe(pipeline: Pipeline) -> list[str]:
    """The forward pass in words and formulas, for the npz's arrays (row-vector convention)."""
    model, train = pipeline.model, pipeline.train
    last = len(layer_sizes(model)) - 2
    lines = [f"x = {INPUT_NAME} (N, {NUM_PIXELS})"]
    lines += [f"x = {model.activation}(x @ w{i} + b{i})" for i in range(last)]
    probabilities = _probabilities(pipeline)
    lines += [f"outputs = {model.output_activation}(x @ w{last} + b{last})",
              f"{OUTPUT_NAME} = {probabilities}(outputs) over the last axis"]
    lines += [f"{name}(x) = {FORMULAS.get(name, name)}" for name in
              dict.fromkeys((model.activation, model.output_activation, probabilities))]
    if train.num_models > 1:
        lines.append(f"{train.num_models} models: model k uses w_i[k] and b_i[k]; "
                     f"{OUTPUT_NAME} = the mean of the models' {OUTPUT_NAME}")
    if train.matmul_precision == "bfloat16":
        lines.append("each @ rounds x and w to bfloat16 and its product to bfloat16, then "
                     "adds b in float32")
    return lines


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _classify_function(network: Network) -> Callable[[jax.Array], jax.Array]:
    """classify with the checkpoint's parameters as constants: images -> probabilities."""
    model, train = network.pipeline.model, network.pipeline.train
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(network.params))
    return lambda images: classify(params, images, model, train.num_models,
                                   precision=train.matmul_precision)


def _input_spec() -> jax.ShapeDtypeStruct:
    """(N, 784) float32, N symbolic: one file for every batch size."""
    shape = jax.export.symbolic_shape(f"{BATCH}, {NUM_PIXELS}")
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _probe_images() -> np.ndarray:
    return np.random.default_rng(0).random((PROBE_IMAGES, NUM_PIXELS), dtype=np.float32)


def _compare(network: Network, run: Callable[[np.ndarray], Any], by: str) -> dict[str, Any]:
    """The exported function against digitsjax's on probe images; a difference is a bug."""
    probe = _probe_images()
    want = network.probabilities(probe).astype(np.float32)  # classify computes float32
    got = np.asarray(run(probe))
    difference = float(np.max(np.abs(got - want))) if got.shape == want.shape else np.inf
    if not difference <= TOLERANCE:
        raise RuntimeError(f"the exported network's probabilities differ from digitsjax's by "
                           f"{difference:.3g} on {PROBE_IMAGES} probe images (shape "
                           f"{got.shape}, expected {want.shape})")
    return {"by": by, "probe_images": PROBE_IMAGES,
            "max_abs_probability_difference": difference}


def _encode_stablehlo(network: Network) -> tuple[bytes, dict[str, Any]]:
    exported = jax.export.export(jax.jit(_classify_function(network)),
                                 platforms=PLATFORMS)(_input_spec())
    return bytes(exported.serialize()), {
        "platforms": list(exported.platforms), "jax": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "load": f"jax.export.deserialize(bytearray(data)).call({INPUT_NAME})"}


def _check_stablehlo(payload: bytes, network: Network) -> dict[str, Any]:
    exported = jax.export.deserialize(bytearray(payload))
    return _compare(network, exported.call, f"jax.export.deserialize, jax {jax.__version__}")


def _encode_npz(network: Network) -> tuple[bytes, dict[str, Any]]:
    arrays = {}
    for i, layer in enumerate(jax.device_get(network.params)):
        arrays[f"w{i}"] = np.asarray(layer["w"], np.float32)
        arrays[f"b{i}"] = np.asarray(layer["b"], np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue(), {
        "arrays": {name: list(array.shape) for name, array in arrays.items()},
        "params_sha256_of": "the bytes of b0, w0, b1, w1, ... in that order (float32, C order)",
        "load": "numpy.load(path)"}


def _check_npz(payload: bytes, network: Network) -> dict[str, Any]:
    """The arrays read back hash to the checkpoint's params_sha256."""
    digest = hashlib.sha256()
    with np.load(io.BytesIO(payload)) as arrays:
        for i in range(len(network.params)):
            for name in (f"b{i}", f"w{i}"):
                digest.update(np.ascontiguousarray(arrays[name], np.float32).tobytes())
    if digest.hexdigest() != params_sha256(network.params):
        raise RuntimeError("the exported arrays do not hash to the checkpoint's params_sha256")
    return {"by": f"numpy.load, numpy {np.__version__}", "params_sha256": digest.hexdigest()}


def _refuse_onnx(pipeline: Pipeline) -> None:
    try:
        import jax2onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the jax2onnx and onnxruntime packages, which are "
                        "not installed", f"install them with {EXTRA}") from None
    if pipeline.train.matmul_precision == "bfloat16":
        raise UserError("ONNX Runtime cannot run this network's bfloat16 matrix multiplies "
                        "(train.matmul_precision = bfloat16)",
                        "export it as stablehlo or npz")


def _encode_onnx(network: Network) -> tuple[bytes, dict[str, Any]]:
    """Converts classify's primitives (its jaxpr), not classify itself: jax2onnx 0.12 swaps
    jnp.dot for its own while it traces, and that one's batching rule fails under jax 0.10
    (`vmap` batches the forward pass). The primitives are the same maths, symbolic N kept."""
    import jax2onnx
    from jax.extend.core import jaxpr_as_fun

    replay = jaxpr_as_fun(jax.make_jaxpr(_classify_function(network))(_input_spec()))
    with _quiet_converter():
        model = jax2onnx.to_onnx(lambda images: replay(images)[0], [(BATCH, NUM_PIXELS)],
                                 model_name="digitsjax", input_names=[INPUT_NAME],
                                 output_names=[OUTPUT_NAME])
    return model.SerializeToString(), {
        "opset": max(entry.version for entry in model.opset_import),
        "jax2onnx": _version("jax2onnx"),
        "load": f"onnxruntime.InferenceSession(path).run(None, {{'{INPUT_NAME}': "
                f"{INPUT_NAME}}})[0]"}


@contextmanager
def _quiet_converter() -> Iterator[None]:
    """jax2onnx warns about plugins it skips and logs through the root logger, which would
    configure logging for the whole process: neither, while it converts."""
    root, guard = logging.getLogger(), logging.NullHandler()
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    root.addHandler(guard)  # logging.info() configures the root logger only if it has none
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        root.removeHandler(guard)


def _check_onnx(payload: bytes, network: Network) -> dict[str, Any]:
    import onnxruntime

    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return _compare(network, lambda images: session.run(None, {INPUT_NAME: images})[0],
                    f"onnxruntime {onnxruntime.__version__}")


FORMATS: dict[str, Format] = {
    "onnx": Format(_encode_onnx, _check_onnx, refuse=_refuse_onnx),
    "stablehlo": Format(_encode_stablehlo, _check_stablehlo),
    "npz": Format(_encode_npz, _check_npz),
}


def summary_lines(done: Exported) -> list[str]:
    """What `export_trained` wrote: the file, its description, then format, size, step,
    fingerprint and how closely the file's probabilities matched the network's."""
    size = (f"{done.size / 1e6:.1f} MB" if done.size >= 1e6 else f"{done.size / 1e3:.1f} kB")
    difference = done.check.get("max_abs_probability_difference")
    checked = (f"  checked: probabilities within {difference:.1g} of digitsjax's on "
               f"{done.check['probe_images']} probe images ({done.check['by']})"
               if difference is not None else "")
    return [str(done.path), str(done.sidecar),
            f"{done.format}  {size}  step {done.step}  params_sha256 {done.params_sha256}"
            f"{checked}"]
