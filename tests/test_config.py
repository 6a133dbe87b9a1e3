"""Pipelines are strict: every mistake is a one-line ConfigError naming the key."""

from pathlib import Path

import pytest

from digitsjax.core.config import (
    Pipeline,
    load_pipeline,
    pipeline_from_dict,
    pipeline_sha256,
    pipeline_to_dict,
)
from digitsjax.errors import ConfigError

PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_shipped_pipeline_parses(path):
    pipeline = load_pipeline(path)
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
    with pytest.raises(ConfigError) as error:
        load_pipeline(write(tmp_path, text))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


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
    pipeline = load_pipeline(PIPELINES[0])
    as_dict = pipeline_to_dict(pipeline)
    assert pipeline_from_dict(as_dict) == pipeline
    reordered = dict(reversed(list(as_dict.items())))
    assert pipeline_sha256(pipeline_from_dict(reordered)) == pipeline_sha256(pipeline)
    changed = load_pipeline(PIPELINES[0], ["seed=99"])
    assert pipeline_sha256(changed) != pipeline_sha256(pipeline)
