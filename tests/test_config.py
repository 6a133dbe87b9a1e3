"""Pipelines are strict: every mistake is a one-line ConfigError naming the key."""

import json
from pathlib import Path

import numpy as np
import pytest

from digitsjax.core.config import (
    FLOAT32_MAX,
    MAX_NESTING,
    Pipeline,
    load_pipeline,
    pipeline_from_dict,
    pipeline_sha256,
    pipeline_to_dict,
)
from digitsjax.errors import ConfigError

PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.toml"))
MNIST_MLP = Path(__file__).parents[1] / "pipelines" / "mnist_mlp.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def refusal(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The error loading `path` with `overrides` is refused with: always one line."""
    with pytest.raises(ConfigError) as error:
        load_pipeline(path, overrides)
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_shipped_pipeline_parses(path):
    pipeline = load_pipeline(path, for_sweep=True)  # hidden_sizes.toml is a sweep
    assert pipeline.name == path.stem


def test_defaults_fill_what_a_file_leaves_out(tmp_path):
    pipeline = load_pipeline(write(tmp_path, "seed = 3\n"))
    assert pipeline.seed == 3
    assert pipeline.model == Pipeline().model
    assert pipeline.name == "p"  # the file stem


def test_classic_networks_are_expressible():
    nielsen = load_pipeline(Path(__file__).parents[1] / "pipelines" / "nielsen.toml")
    assert (nielsen.model.hidden, nielsen.model.activation, nielsen.train.loss) == \
        ((30,), "sigmoid", "quadratic")
    assert (nielsen.optimizer.name, nielsen.optimizer.learning_rate,
            nielsen.train.batch_size, nielsen.train.epochs) == ("sgd", 3.0, 10, 30)


@pytest.mark.parametrize("text, message", [
    ("[model]\nhiden = [30]\n", "unknown key 'model.hiden' (did you mean 'model.hidden'?)"),
    ("sed = 1\n", "unknown key 'sed' (did you mean 'seed'?)"),
    ("[modle]\n", "unknown key 'modle' (did you mean 'model'?)"),
    ("[train]\nbatch_size = \"128\"\n", "'train.batch_size' must be int, got str '128'"),
    ("[train]\nbatch_size = 12.5\n", "'train.batch_size' must be int, got float 12.5"),
    ("[train]\nepochs = true\n", "'train.epochs' must be int, got str 'True'"),
    ("[model]\nhidden = 30\n", "'model.hidden' must be a list of int, got int 30"),
    ("[model]\nhidden = [30, 0]\n", "'model.hidden[1]' must be between 1 and 65536, got 0"),
    ("[model]\nhidden = [100000]\n", "'model.hidden[0]' must be between 1 and 65536"),
    ("[optimizer]\nlearning_rate = inf\n", "'optimizer.learning_rate' must be a finite number"),
    ("[model]\ndropout = nan\n", "'model.dropout' must be a finite number, got nan"),
    ("[model]\nactivation = \"relu6\"\n", "'model.activation' is 'relu6' (did you mean 'relu'?)"),
    ("[optimizer]\nname = \"adma\"\n", "'optimizer.name' is 'adma' (did you mean 'adam'?)"),
    ("[optimizer]\nlearning_rate = 0\n", "'optimizer.learning_rate' must be > 0, got 0.0"),
    ("[train]\nbatch_size = 0\n", "'train.batch_size' must be between 1 and 55000"),
    ("[train]\nloss = \"hinge\"\n", "'train.loss' is 'hinge'"),
    ("[data]\nvalidation_size = 60000\n", "'data.validation_size' must be between 1 and 59999"),
    ("model = 3\n", "[model] must be a table"),
    ("[model]\noutput_activation = \"sigmoid\"\n", "softmax_cross_entropy needs"),
    ("seed = [\n", "is not valid TOML"),
])
def test_bad_pipelines_are_rejected_with_one_line_naming_the_key(tmp_path, text, message):
    assert message in refusal(write(tmp_path, text))


def test_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match="not found; pass a path such as"):
        load_pipeline(tmp_path / "nope.toml")


def test_set_overrides_parse_toml_values_and_bare_words(tmp_path):
    path = write(tmp_path, "")
    pipeline = load_pipeline(path, ["model.hidden=[100, 10]", "model.activation=tanh",
                                    "optimizer.learning_rate=0.5", "seed=7"])
    assert pipeline.model.hidden == (100, 10)
    assert pipeline.model.activation == "tanh"
    assert pipeline.optimizer.learning_rate == 0.5
    assert pipeline.seed == 7


@pytest.mark.parametrize("override, message", [
    ("train.epochs", "must look like section.key=value"),
    ("train.epohcs=3", "did you mean 'train.epochs'"),
    ("seed.x=3", "seed is a value, not a section"),  # the file below sets seed
    ("train.epochs=-1", "'train.epochs' must be >= 1"),
])
def test_bad_overrides_are_rejected(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write(tmp_path, "seed = 1\n"), [override])


def test_resolved_pipeline_round_trips_and_fingerprints_ignore_key_order():
    pipeline = load_pipeline(MNIST_MLP)
    as_dict = pipeline_to_dict(pipeline)
    assert pipeline_from_dict(as_dict) == pipeline
    reordered = dict(reversed(list(as_dict.items())))
    assert pipeline_sha256(pipeline_from_dict(reordered)) == pipeline_sha256(pipeline)
    changed = load_pipeline(MNIST_MLP, ["seed=99"])
    assert pipeline_sha256(changed) != pipeline_sha256(pipeline)


# Seeds: jax.random.PRNGKey takes 32 bits (without jax_enable_x64, which digitsjax leaves off),
# so a larger seed would silently be another run's seed, or fail deep inside JAX.
MAX_SEED = 2**32 - 1


def test_the_largest_seed_is_the_largest_key_jax_keeps_apart():
    import jax

    def key(seed):
        return jax.random.key_data(jax.random.PRNGKey(seed)).tolist()

    assert key(MAX_SEED) != key(MAX_SEED - 1)
    assert key(MAX_SEED + 1) == key(0)  # what an unchecked seed of 2**32 would have trained
    assert load_pipeline(MNIST_MLP, [f"seed={MAX_SEED}"]).seed == MAX_SEED
    assert load_pipeline(MNIST_MLP, [f"seed={MAX_SEED - 3}", "train.num_models=4"])


@pytest.mark.parametrize("overrides, message", [
    ([f"seed={2**32}"], "'seed' must be between 0 and 4294967295 (jax.random.PRNGKey takes "
                        "32 bits), got 4294967296"),
    ([f"seed={2**70}"], f"'seed' must be between 0 and 4294967295 (jax.random.PRNGKey takes "
                        f"32 bits), got {2**70}"),
    (["seed=-1"], "'seed' must be between 0 and 4294967295"),
    ([f"seed={2**32 - 3}", "train.num_models=4"],
     "'seed' must be between 0 and 4294967292 with train.num_models = 4 (model k trains with "
     "seed + k"),
])
def test_a_seed_beyond_32_bits_is_refused_rather_than_wrapped(overrides, message):
    assert message in refusal(MNIST_MLP, overrides)


# The step counter is an int32 in the train state: a run has at most 2**31 - 1 steps.
@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=1000000000"],
     "'train.epochs' = 1000000000 makes 429,000,000,000 steps (429 per epoch), more than the "
     "step counter holds (2,147,483,647, an int32); lower train.epochs to at most 5,005,789"),
    (["train.batch_size=1", "train.epochs=39046"],
     "lower train.epochs to at most 39,045 (or raise train.batch_size)"),
    (["train.epochs=1e9"], "'train.epochs' must be int, got float 1000000000.0"),
    ([f"optimizer.warmup_steps={2**40}"],
     "'optimizer.warmup_steps' must be between 0 and 2147483647 (the step counter is an int32)"),
])
def test_a_run_longer_than_the_step_counter_is_refused(overrides, message):
    assert message in refusal(MNIST_MLP, overrides)


def test_the_longest_run_the_step_counter_holds_is_accepted():
    pipeline = load_pipeline(MNIST_MLP, ["train.batch_size=1", "train.epochs=39045"])
    assert pipeline.total_steps == 39045 * 55000 < 2**31


# The name is the default workdir, checkpoints/<name>: it must stay one folder inside it.
@pytest.mark.parametrize("name", [
    "../../x", "/abs", "a/b", ".", "..", "", ".hidden", "a\\b", "tab\there", "new\nline",
    "nul\x00", "a b", "x" * 256,
])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    message = refusal(write(tmp_path, f"name = {json.dumps(name)}\n"))
    assert "'name' must be a plain folder name" in message
    assert "e.g. pipeline key name = mnist_mlp" in message
    with pytest.raises(ConfigError, match="'name' must be a plain folder name"):
        load_pipeline(MNIST_MLP, [f"name={json.dumps(name)}"])


@pytest.mark.parametrize("name", ["mnist_mlp", "run-2", "v1.5", "-x", "réseau", "x" * 255])
def test_a_plain_folder_name_is_accepted(tmp_path, name):
    assert load_pipeline(write(tmp_path, f"name = {json.dumps(name)}\n")).name == name


def test_a_file_whose_name_is_not_a_folder_name_must_name_its_pipeline(tmp_path):
    path = tmp_path / "my run.toml"
    path.write_text("seed = 1\n")
    with pytest.raises(ConfigError, match=r"'name' must be a plain folder name.*got 'my run'"):
        load_pipeline(path)
    assert load_pipeline(path, ["name=my_run"]).name == "my_run"


# A [sweep] table is a grid of runs, which `digitsjax train` would not run.
def test_a_pipeline_with_a_sweep_table_is_not_one_run(tmp_path):
    path = write(tmp_path, "seed = 1\n[sweep]\n\"model.hidden\" = [[10], [20]]\n")
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    assert str(error.value) == (
        f"{path} has a [sweep] table: it describes several runs; run them with "
        f"`digitsjax sweep {path}`, or remove the table to train one")
    assert load_pipeline(path, for_sweep=True).seed == 1  # the sweep's base pipeline


# validation_size and batch_size share the 60,000 training images: each error names the key
# that is out of range, or both when only their combination is.
@pytest.mark.parametrize("overrides, message", [
    (["data.validation_size=0"], "'data.validation_size' must be between 1 and 59999, got 0"),
    (["data.validation_size=60000"],
     "'data.validation_size' must be between 1 and 59999, got 60000"),
    (["data.validation_size=-1"], "'data.validation_size' must be between 1 and 59999, got -1"),
    (["data.validation_size=59999"],
     "'data.validation_size' = 59999 leaves 1 training image, fewer than 'train.batch_size' = "
     "128; lower data.validation_size to at most 59872, or train.batch_size to at most 1"),
    (["train.batch_size=55001"],
     "'data.validation_size' = 5000 leaves 55000 training images, fewer than "
     "'train.batch_size' = 55001; lower data.validation_size to at most 4999, or "
     "train.batch_size to at most 55000"),
    (["train.batch_size=60000"],
     "'train.batch_size' must be between 1 and 55000 (the training images), got 60000"),
    (["train.batch_size=0"],
     "'train.batch_size' must be between 1 and 55000 (the training images), got 0"),
])
def test_validation_and_batch_size_errors_name_the_key_at_fault(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_pipeline(MNIST_MLP, overrides)
    assert message in str(error.value)


# Nesting: TOML's parser recurses once per level, so 500 levels deep is a RecursionError there.
DEEP = 500


@pytest.mark.parametrize("text", [
    f"seed = {'[' * DEEP}{']' * DEEP}\n",
    f"seed = {'{a = ' * DEEP}1{'}' * DEEP}\n",
    f"[model]\nhidden = {'[' * 40}1{']' * 40}\n",  # deep enough to refuse, shallow enough to parse
], ids=["arrays", "inline tables", "parsed but too deep"])
def test_a_file_nested_too_deeply_is_refused_in_one_line_naming_the_file_and_the_limit(
        tmp_path, text):
    path = write(tmp_path, text)
    message = refusal(path)
    assert message.startswith(f"{path}: ") and f"nested deeper than {MAX_NESTING} levels" \
        in message


@pytest.mark.parametrize("value", ["[" * DEEP + "]" * DEEP, "{a = " * DEEP + "1" + "}" * DEEP,
                                   "[" * 40 + "]" * 40],
                         ids=["arrays", "inline tables", "parsed but too deep"])
def test_a_set_value_nested_too_deeply_is_refused_in_one_line_naming_the_option(value):
    message = refusal(MNIST_MLP, [f"model.hidden={value}"])
    assert "'model.hidden'" in message and f"nested deeper than {MAX_NESTING} levels" in message


def test_nesting_a_pipeline_needs_is_well_within_the_limit(tmp_path):
    grid = "[sweep]\n\"model.hidden\" = [[10, 10], [20]]\n"  # a sweep's grid: 4 levels
    assert load_pipeline(write(tmp_path, grid), for_sweep=True).model.hidden == (128, 64)


# Floats: the device computes in float32, where a larger magnitude is infinite.
@pytest.mark.parametrize("override, value", [
    ("optimizer.learning_rate=1e39", "1e+39"),
    ("model.max_norm=3.5e38", "3.5e+38"),
    ("optimizer.weight_decay=1e300", "1e+300"),
    ("augment.elastic_alpha=10000000000000000000000000000000000000000", "1e+40"),  # an int
    (f"optimizer.learning_rate=1{'0' * 400}", "about 1e+400"),  # beyond float64's range too
], ids=["learning_rate", "max_norm", "weight_decay", "an int", "an int beyond float64"])
def test_a_float_beyond_float32s_range_is_refused_naming_the_key_and_the_range(override,
                                                                                value):
    key = override.split("=")[0]
    message = refusal(MNIST_MLP, [override])
    assert f"'{key}' must be at most {FLOAT32_MAX:.7g} in magnitude (float32's largest " \
           f"finite number), got {value}" in message


def test_the_largest_float32_is_accepted():
    assert load_pipeline(MNIST_MLP, [f"model.max_norm={FLOAT32_MAX!r}"]).model.max_norm == \
        FLOAT32_MAX
    assert float(np.float32(FLOAT32_MAX)) == FLOAT32_MAX and np.isfinite(np.float32(FLOAT32_MAX))
