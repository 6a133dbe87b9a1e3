"""Fuzzing the pipeline parser: any input is a Pipeline or one-line ConfigError, never a crash."""

import tomllib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from digitsjax.core.config import Pipeline, load_pipeline, pipeline_from_dict
from digitsjax.errors import ConfigError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["name", "seed", "data", "model", "optimizer", "train", "checkpoint", "hidden",
        "activation", "learning_rate", "batch_size", "epochs", "validation_size", "keep",
        "every_steps", "dropout", "init", "loss", "schedule", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)


def parses_or_fails_cleanly(build):
    try:
        assert isinstance(build(), Pipeline)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_any_structure_is_a_pipeline_or_a_config_error(raw):
    parses_or_fails_cleanly(lambda: pipeline_from_dict(raw))


@FUZZ
@given(st.text(max_size=200))
def test_any_file_text_is_a_pipeline_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "p.toml"
    try:
        path.write_text(text)
    except UnicodeEncodeError:
        return  # not representable as a file
    parses_or_fails_cleanly(lambda: load_pipeline(path))


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=3))
@example(["0\n0="])  # found by CI: an unknown key with a newline made a two-line error
@example(["seed.x\ny=3"])  # the same through a section that is a value
def test_any_override_is_applied_or_a_config_error(tmp_path_factory, overrides):
    path = tmp_path_factory.mktemp("fuzz") / "p.toml"
    path.write_text("seed = 1\n[model]\nhidden = [8]\n")
    parses_or_fails_cleanly(lambda: load_pipeline(path, overrides))


def test_fuzzing_reaches_valid_pipelines_too():
    """The generators above can produce valid input: the property is not vacuous."""
    assert isinstance(pipeline_from_dict(tomllib.loads("seed = 3\n[model]\nhidden = []\n")),
                      Pipeline)
