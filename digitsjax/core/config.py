"""Pipelines: a TOML file that fully describes a run, parsed into frozen dataclasses.

A run is a pure function of its resolved `Pipeline`, so parsing is strict: an unknown key, a
value of the wrong type or out of range is a `ConfigError` naming the key (and the closest
valid key for a typo). Defaults live here, in one place; the resolved pipeline, defaults
filled in, is what a run records in its manifest and what `verify` replays.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitsjax.core.data import SPLIT_SIZES
from digitsjax.core.losses import LOSSES
from digitsjax.core.model import (
    ACTIVATIONS,
    INITIALIZERS,
    MATMUL_PRECISIONS,
    OUTPUT_ACTIVATIONS,
)
from digitsjax.core.optim import OPTIMIZERS, SCHEDULES
from digitsjax.errors import ConfigError, setting

MAX_LAYER_SIZE = 65_536  # beyond this a 784-input layer alone outgrows most devices' memory
MAX_SEED = 2**32 - 1
"""jax.random.PRNGKey keeps a seed's low 32 bits (digitsjax leaves jax_enable_x64 off): 2**32
is seed 0 again, and from 2**63 on it raises OverflowError."""
MAX_STEPS = 2**31 - 1
"""The train state counts steps in an int32; schedules and dropout keys read that count."""
FOLDER_NAME = re.compile(r"[\w-][\w.-]*")
"""A name that is one plain folder: letters, digits, '_', '-', '.', and not '.' first (so
neither '.', '..' nor a hidden folder). No separator, no control character."""
MAX_NAME_BYTES = 255  # the longest file name ext4, XFS and APFS take
SWEEP_TABLE = "sweep"
MAX_NESTING = 32
"""The deepest a pipeline file or a value may nest tables and arrays within each other. A
pipeline needs 4 (a sweep's grid of lists); Python's TOML parser recurses once per level and
runs out of stack a few hundred levels down, which is no mistake to report as a crash."""
FLOAT32_MAX = 3.4028234663852886e38
"""float32's largest finite number. The device computes with a pipeline's floats in float32,
where a larger magnitude is infinite: such a value is refused, not trained with as inf."""


@dataclass(frozen=True)
class DataConfig:
    validation_size: int = 5000
    """Images held out from the end of the 60k training split for model selection."""
    mnist_dir: str = ""
    """Folder with the four IDX .gz files, used as tfds' manual download dir ("" = unset)."""
    tfds_data_dir: str = ""
    """Where tfds keeps prepared datasets ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets)."""


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (128, 64)
    activation: str = "relu"
    """A key of `model.ACTIVATIONS`, for the hidden layers."""
    output_activation: str = "linear"
    """"linear" emits logits (softmax lives in the loss); "sigmoid" is Nielsen's output layer."""
    init: str = "he"
    """A key of `model.INITIALIZERS`."""
    dropout: float = 0.0
    """Dropout on hidden activations while training; the only per-step randomness."""
    input_dropout: float = 0.0
    """Probability of dropping each input pixel while training (Srivastava et al. 2014: 0.2)."""
    max_norm: float = 0.0
    """After each update, scale down any unit's incoming weights longer than this (L2 norm),
    as Srivastava et al. (2014) pair with dropout; 0 = off."""


@dataclass(frozen=True)
class AugmentConfig:
    """`[augment]`: distortions of each training image, drawn afresh at every step (see
    core/augment.py). All strengths 0, the default, trains on the images as they are."""

    rotation: float = 0.0
    """Degrees: each image is turned by an angle uniform in [-rotation, rotation]."""
    shear: float = 0.0
    """Degrees, the same way (a horizontal shear)."""
    scale: float = 0.0
    """Each axis is scaled by a factor uniform in [1 - scale, 1 + scale]."""
    translation: float = 0.0
    """Pixels: each axis is shifted by up to this much."""
    elastic_alpha: float = 0.0
    """Simard et al. (2003)'s elastic distortion: the strength of the displacement field."""
    elastic_sigma: float = 4.0
    """Pixels: the standard deviation of the Gaussian that smooths the displacement field."""


@dataclass(frozen=True)
class OptimizerConfig:
    """`[optimizer]`: how gradients become updates."""

    name: str = "adam"
    """A key of `optim.OPTIMIZERS`."""
    learning_rate: float = 1e-3
    """The peak learning rate; the schedule shapes it over the run's steps."""
    schedule: str = "constant"
    """A key of `optim.SCHEDULES`."""
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    """For cosine schedules: the learning rate at the last step, as a fraction of the peak."""
    momentum: float = 0.9
    """For momentum, nesterov and rmsprop."""
    weight_decay: float = 0.0
    """For adamw."""
    decay_per_epoch: float = 1.0
    """For epoch_decay: the learning rate is multiplied by this after every epoch ..."""
    min_learning_rate: float = 0.0
    """... down to this floor (Ciresan et al. 2010 decay from 1e-3 towards 1e-6)."""


@dataclass(frozen=True)
class TrainConfig:
    """`[train]`: what is minimised, in which batches, for how long, by how many models."""

    loss: str = "softmax_cross_entropy"
    """A key of `losses.LOSSES`."""
    batch_size: int = 128
    """The global batch, split over every device of every process."""
    epochs: int = 10
    eval_every_epochs: int = 1
    num_models: int = 1
    """Train K models in one vmapped program; model k is the run with seed = seed + k."""
    matmul_precision: str = "float32"
    """A key of `model.MATMUL_PRECISIONS`: the maths of every matrix multiply, in training and
    evaluation. "float32" is true float32 on every backend."""
    deterministic: bool = True
    """Ask XLA for deterministic GPU programs (the same bits from every compilation), at some
    speed; CPU and TPU programs are deterministic either way (see run/process.py)."""


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0
    """Also save every N steps (0 = only at epoch ends, or at the end of training)."""
    every_epoch: bool = True
    keep: int = 3
    """How many of the most recent checkpoints to keep."""
    keep_best: bool = True
    """Also keep the checkpoint with the best validation accuracy."""


@dataclass(frozen=True)
class Pipeline:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def train_size(self) -> int:
        return SPLIT_SIZES["train"] - self.data.validation_size

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch; the remainder of each epoch's permutation is skipped."""
        return self.train_size // self.train.batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.train.epochs


def load_pipeline(path: str | Path, overrides: Overrides = (), *,
                  for_sweep: bool = False) -> Pipeline:
    """Read a pipeline file and apply `section.key=value` overrides (values in TOML syntax).

    A `[sweep]` table makes the file a grid of runs. Loaded as one run, it is refused: the grid
    would be dropped without a word. `for_sweep=True` is for the sweep itself, which reads the
    grid with `apps.sweep.read_grid`: the table is left out and the rest is its base pipeline.
    """
    path = Path(path)
    raw = read_pipeline_file(path)
    if SWEEP_TABLE in raw and not for_sweep:
        raise ConfigError(f"{path} has a [{SWEEP_TABLE}] table: it describes several runs",
                          f"run them with `digitsjax sweep {path}`, or remove the table to "
                          "train one")
    raw.pop(SWEEP_TABLE, None)
    raw.setdefault("name", path.stem)
    return pipeline_from_tables(raw, overrides, str(path))


Overrides = Iterable[str] | Mapping[str, Any]
"""`section.key=value` strings (values in TOML syntax), or {"section.key": value} (values as
Python writes them): a notebook builds the second without quoting TOML."""


def pipeline_from_tables(raw: Mapping[str, Any], overrides: Overrides = (),
                         source: str = "pipeline") -> Pipeline:
    """A pipeline from its tables as a file holds them (plain data, no `[sweep]`) and
    `overrides`, validated as a file is, its name included; `raw` is left as it was."""
    if _nested_too_deeply(raw.values()):
        raise _too_deep(source)
    raw = copy.deepcopy(dict(raw))
    apply_overrides(raw, overrides)
    pipeline = pipeline_from_dict(raw, source=source)
    _check_name(pipeline.name, source)
    return pipeline


def _check_name(name: str, source: str) -> None:
    """A pipeline file's name is its runs' default workdir, `checkpoints/<name>`: it must be one
    plain folder there, never a path out of it (`../x`, `/x`) or a hidden or special one.

    Checked where a file is loaded, not in `pipeline_from_dict`: recorded pipelines are read
    back as they were written, and a sweep names its variants `<sweep>/<variant>` (their
    workdirs are chosen by the sweep, not by the name).
    """
    if FOLDER_NAME.fullmatch(name) and len(name.encode()) <= MAX_NAME_BYTES:
        return
    raise ConfigError(f"{source}: 'name' must be a plain folder name (letters, digits, '.', "
                      f"'_' and '-', not starting with '.', at most {MAX_NAME_BYTES} bytes: it "
                      f"names the default workdir checkpoints/<name>), got {name!r}",
                      f"e.g. {setting('name', 'mnist_mlp')}")


def override_pipeline(pipeline: Pipeline, overrides: Overrides, source: str) -> Pipeline:
    """`pipeline` with `overrides` applied, validated like a file."""
    raw = pipeline_to_dict(pipeline)
    apply_overrides(raw, overrides)
    return pipeline_from_dict(raw, source=source)


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> None:
    """Set each override in `raw`; anything but the two forms `Overrides` names is refused."""
    example = ("e.g. ['optimizer.learning_rate=0.01'], or {'optimizer.learning_rate': 0.01} "
               "from Python")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"override key {key!r} must be a section.key string", example)
            if _nested_too_deeply([value]):
                raise _too_deep(f"override {key!r}")
            set_key(raw, key.strip(), value, option="override")
        return
    if isinstance(overrides, str | bytes) or not isinstance(overrides, Iterable):
        raise ConfigError(f"overrides must be a list of section.key=value strings or a dict, "
                          f"got {_describe(overrides)}", example)
    for override in overrides:
        if not isinstance(override, str):
            raise ConfigError(f"override {override!r} must be a section.key=value string",
                              example)
        _apply_override(raw, override)


def read_pipeline_file(path: Path) -> dict[str, Any]:
    """A pipeline file's TOML as plain data, unvalidated."""
    example = "pass a path such as pipelines/mnist_mlp.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipeline file {path} not found; {example}") from None
    except IsADirectoryError:
        raise ConfigError(f"pipeline {path} is a folder, not a file; {example}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"pipeline file {path} is not UTF-8 text (TOML is); {example}") \
            from None
    except OSError as e:
        raise ConfigError(f"cannot read pipeline file {path} ({e.strerror}); check its "
                          f"permissions, or {example}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except RecursionError:
        raw = None
    if raw is None or _nested_too_deeply(raw.values()):
        raise _too_deep(str(path))
    return raw


def pipeline_from_dict(raw: Mapping[str, Any], source: str = "pipeline") -> Pipeline:
    """Build and validate a Pipeline from plain data (a parsed TOML file or a manifest)."""
    pipeline = _build(Pipeline, raw, prefix="", source=source)
    _validate(pipeline, source)
    return pipeline


def pipeline_to_dict(pipeline: Pipeline) -> dict[str, Any]:
    """The resolved pipeline as JSON-ready data; `pipeline_from_dict` inverts it."""
    return json.loads(json.dumps(dataclasses.asdict(pipeline)))


def pipeline_sha256(pipeline: Pipeline) -> str:
    """A fingerprint of everything that determines the run (key order independent)."""
    canonical = json.dumps(pipeline_to_dict(pipeline), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value",
                          f"e.g. {setting('optimizer.learning_rate', '0.01')}")
    set_key(raw, key, parse_value(value, f"override {key!r}"), option="override")


def parse_value(text: str, option: str = "") -> Any:
    """An option's value in TOML syntax; a bare word such as tanh is meant as a string.

    `option` names the option in the error for a value nested deeper than `MAX_NESTING`.
    """
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()
    except RecursionError:
        value = None
    if value is None or _nested_too_deeply([value]):
        raise _too_deep(option or f"value {text.strip()[:20]!r}...")
    return value


def _nested_too_deeply(values: Iterable[Any]) -> bool:
    """Whether tables or arrays nest deeper than `MAX_NESTING` levels in any of `values` (a
    value that is one table or array is one level). Walked without recursion: the depth is the
    user's."""
    stack = [(value, 1) for value in values]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            if level > MAX_NESTING:
                return True
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, level + 1) for item in items)
    return False


def _too_deep(source: str) -> ConfigError:
    return ConfigError(f"{source}: tables or arrays nested deeper than {MAX_NESTING} levels",
                       "flatten it: a pipeline needs 4 at most (a sweep's grid of lists)")


def set_key(raw: dict[str, Any], key: str, value: Any, option: str) -> None:
    """Set dotted `key` (e.g. model.hidden) in nested plain data, creating sections."""
    *sections, leaf = key.split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{option} {key!r}: {section} is a value, not a section")
    table[leaf] = value


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            # repr: a key is the user's text, and may hold a newline (a quoted TOML key, --set)
            raise ConfigError(f"{source}: unknown key {prefix + str(key)!r}"
                              f"{_suggest(str(key), fields, prefix)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, f"{prefix}{key}.", source)
        else:
            values[key] = _coerce(value, hint, f"{prefix}{key}", source)
    return cls(**values)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's field types, read once: each read evaluates its annotations' text,
    which was most of the time a sweep of 1,024 points took to build its pipelines."""
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a TOML value against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list of {item_type.__name__}, "
                              f"got {_describe(value)}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise AssertionError(f"unsupported field type {hint}")  # keep the schema simple
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        value = _float32_range(value, key, source)
    if hint is int and isinstance(value, bool):
        value = str(value)  # bool is an int subclass; reject it as the wrong type below
    if not isinstance(value, hint):
        expected = "true or false" if hint is bool else hint.__name__
        raise ConfigError(f"{source}: '{key}' must be {expected}, got {_describe(value)}")
    return value


def _float32_range(number: int | float, key: str, source: str) -> float:
    """A float key's value as a float, if float32 holds it as a finite number: every float key
    of a pipeline passes here."""
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{source}: '{key}' must be a finite number, got {number}")
    if abs(number) > FLOAT32_MAX:
        try:
            shown = f"{number:g}"
        except OverflowError:  # an int beyond even float64's range
            shown = f"about 1e+{len(str(abs(number))) - 1}"
        raise ConfigError(f"{source}: '{key}' must be at most {FLOAT32_MAX:.7g} in magnitude "
                          f"(float32's largest finite number), got {shown}")
    return float(number)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _suggest(key: str, valid: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (valid: {', '.join(valid)})"


def _check(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {message}")


def _check_choice(value: str, registry: Mapping[str, Any], key: str, source: str) -> None:
    """`value` must name an entry of the option family's registry."""
    if value not in registry:
        choices = tuple(registry)
        raise ConfigError(f"{source}: '{key}' is {value!r}{_suggest(value, choices)}; "
                          f"choose one of {', '.join(choices)}")


def _validate(p: Pipeline, source: str) -> None:
    """Every range and choice, one section at a time (each in `_SECTION_CHECKS`)."""
    for check in _SECTION_CHECKS:
        check(p, source)


def _check_data(p: Pipeline, source: str) -> None:
    train_images = SPLIT_SIZES["train"]
    _check(0 < p.data.validation_size < train_images, source,
           f"'data.validation_size' must be between 1 and {train_images - 1}, "
           f"got {p.data.validation_size}")


def _check_model(p: Pipeline, source: str) -> None:
    m = p.model
    for i, size in enumerate(m.hidden):
        _check(1 <= size <= MAX_LAYER_SIZE, source,
               f"'model.hidden[{i}]' must be between 1 and {MAX_LAYER_SIZE}, got {size}")
    _check_choice(m.activation, ACTIVATIONS, "model.activation", source)
    _check_choice(m.output_activation, OUTPUT_ACTIVATIONS, "model.output_activation", source)
    _check_choice(m.init, INITIALIZERS, "model.init", source)
    for key, rate in (("dropout", m.dropout), ("input_dropout", m.input_dropout)):
        _check(0.0 <= rate < 1.0, source, f"'model.{key}' must be in [0, 1), got {rate}")
    _check(m.max_norm >= 0, source, f"'model.max_norm' must be >= 0 (0 = off), got {m.max_norm}")


def _check_augment(p: Pipeline, source: str) -> None:
    a = p.augment
    for key, value, top in (("rotation", a.rotation, 180.0), ("shear", a.shear, 60.0),
                            ("translation", a.translation, 28.0)):
        _check(0.0 <= value <= top, source,
               f"'augment.{key}' must be between 0 and {top:g}, got {value:g}")
    _check(0.0 <= a.scale < 1.0, source, f"'augment.scale' must be in [0, 1), got {a.scale:g}")
    _check(a.elastic_alpha >= 0, source,
           f"'augment.elastic_alpha' must be >= 0 (0 = off), got {a.elastic_alpha:g}")
    _check(0.0 < a.elastic_sigma <= 28.0, source,
           f"'augment.elastic_sigma' must be in (0, 28] pixels, got {a.elastic_sigma:g}")


def _check_optimizer(p: Pipeline, source: str) -> None:
    o = p.optimizer
    _check_choice(o.name, OPTIMIZERS, "optimizer.name", source)
    _check_choice(o.schedule, SCHEDULES, "optimizer.schedule", source)
    _check(o.learning_rate > 0, source,
           f"'optimizer.learning_rate' must be > 0, got {o.learning_rate}")
    _check(0 <= o.warmup_steps <= MAX_STEPS, source,
           f"'optimizer.warmup_steps' must be between 0 and {MAX_STEPS} (the step counter is "
           f"an int32), got {o.warmup_steps}")
    _check(0.0 <= o.final_lr_fraction <= 1.0, source,
           f"'optimizer.final_lr_fraction' must be in [0, 1], got {o.final_lr_fraction}")
    _check(0.0 <= o.momentum < 1.0, source,
           f"'optimizer.momentum' must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, source,
           f"'optimizer.weight_decay' must be >= 0, got {o.weight_decay}")
    _check(0.0 < o.decay_per_epoch <= 1.0, source,
           f"'optimizer.decay_per_epoch' must be in (0, 1], got {o.decay_per_epoch}")
    _check(0.0 <= o.min_learning_rate <= o.learning_rate, source,
           f"'optimizer.min_learning_rate' must be between 0 and optimizer.learning_rate "
           f"({o.learning_rate:g}), got {o.min_learning_rate:g}")


def _check_train(p: Pipeline, source: str) -> None:
    t = p.train
    _check_choice(t.loss, LOSSES, "train.loss", source)
    _check(not LOSSES[t.loss].needs_logits or p.model.output_activation == "linear", source,
           f"'train.loss' {t.loss} needs model.output_activation = \"linear\" "
           "(the softmax is part of the loss)")
    _check_batch_size(p, source)
    _check(t.epochs >= 1, source, f"'train.epochs' must be >= 1, got {t.epochs}")
    _check_step_count(p, source)
    _check(t.eval_every_epochs >= 1, source,
           f"'train.eval_every_epochs' must be >= 1, got {t.eval_every_epochs}")
    _check(t.num_models >= 1, source, f"'train.num_models' must be >= 1, got {t.num_models}")
    _check(t.num_models <= MAX_SEED + 1, source,
           f"'train.num_models' must be at most {MAX_SEED + 1} (one 32-bit seed each), "
           f"got {t.num_models}")
    _check_choice(t.matmul_precision, MATMUL_PRECISIONS, "train.matmul_precision", source)


def _check_batch_size(p: Pipeline, source: str) -> None:
    """A batch must fit in the training images, which `data.validation_size` leaves over.

    When the batch alone fits the 60k training split but not what the validation split leaves
    of it, neither key is wrong alone: the error names both, with a bound for each.
    """
    batch, left, held_out = p.train.batch_size, p.train_size, p.data.validation_size
    largest_batch = SPLIT_SIZES["train"] - 1  # the largest batch any validation_size leaves
    if left < batch <= largest_batch:
        raise ConfigError(
            f"{source}: 'data.validation_size' = {held_out} leaves {left} training "
            f"image{'s' if left > 1 else ''}, fewer than 'train.batch_size' = {batch}",
            f"lower data.validation_size to at most {SPLIT_SIZES['train'] - batch}, or "
            f"train.batch_size to at most {left}")
    _check(1 <= batch <= left, source,
           f"'train.batch_size' must be between 1 and {left} (the training images), "
           f"got {batch}")


def _check_step_count(p: Pipeline, source: str) -> None:
    """The train state counts steps in an int32: a run fits in `MAX_STEPS` steps."""
    if p.total_steps <= MAX_STEPS:
        return
    per_epoch = p.steps_per_epoch
    larger_batch = " (or raise train.batch_size)" if p.train.batch_size < p.train_size else ""
    raise ConfigError(
        f"{source}: 'train.epochs' = {p.train.epochs} makes {p.total_steps:,} steps "
        f"({per_epoch:,} per epoch), more than the step counter holds ({MAX_STEPS:,}, an "
        "int32)", f"lower train.epochs to at most {MAX_STEPS // per_epoch:,}{larger_batch}")


def _check_checkpoint(p: Pipeline, source: str) -> None:
    c = p.checkpoint
    _check(c.every_steps >= 0, source,
           f"'checkpoint.every_steps' must be >= 0, got {c.every_steps}")
    _check(c.keep >= 1, source, f"'checkpoint.keep' must be >= 1, got {c.keep}")


def _check_seed(p: Pipeline, source: str) -> None:
    """Model k trains with key PRNGKey(seed + k), and PRNGKey keeps a seed's low 32 bits."""
    models = p.train.num_models
    largest = MAX_SEED - (models - 1)
    why = ("(jax.random.PRNGKey takes 32 bits)" if models == 1 else
           f"with train.num_models = {models} (model k trains with seed + k, and "
           "jax.random.PRNGKey takes 32 bits)")
    _check(0 <= p.seed <= largest, source,
           f"'seed' must be between 0 and {largest} {why}, got {p.seed}")


# In this order: the seed's range depends on train.num_models, checked before it.
_SECTION_CHECKS = (_check_data, _check_model, _check_augment, _check_optimizer, _check_train,
                   _check_checkpoint, _check_seed)
