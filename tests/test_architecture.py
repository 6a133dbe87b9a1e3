"""The package's shape, as docs/architecture.md states it: layers that import only downwards,
short functions, registries that validation reads, imports without side effects, errors as data.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from digitsjax import errors
from digitsjax.core import config, losses, model, optim
from digitsjax.core.config import pipeline_from_dict
from digitsjax.errors import COMMAND_LINE, ConfigError, UserError

from .conftest import REPO

PACKAGE = REPO / "digitsjax"
LAYERS = ("base", "core", "run", "apps", "cli")  # lowest first
MAX_FUNCTION_LINES = 60
MAX_CLI_LINES = 400
CLI_MODULES = ("cli", "arguments", "main", "api", "__main__")
"""The cli layer's modules, at the package's root: the command, its process, the Python API."""


def layer(module: str) -> str:
    """`digitsjax.run.loop` -> "run"; the root modules are base, but for CLI_MODULES."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("core", "run", "apps"):
        return parts[1]
    return "cli" if parts[-1] in CLI_MODULES else "base"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every digitsjax module `path` imports, at the top or lazily inside a function."""
    return modules_imported_by(ast.parse(path.read_text()))


def modules_imported_by(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "digitsjax" and
            (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists()}


def test_every_module_sits_in_a_layer_the_document_names():
    text = (REPO / "docs" / "architecture.md").read_text()
    for path in package_modules():
        name = module_name(path)
        if name.count(".") == 2:  # digitsjax.<layer>.<module>
            assert f" {name.rsplit('.', 1)[1]} " in text or \
                f" {name.rsplit('.', 1)[1]}\n" in text, f"{name} is not in docs/architecture.md"


@pytest.mark.parametrize("path", package_modules(), ids=module_name)
def test_modules_import_only_their_own_layer_or_those_below(path):
    here = LAYERS.index(layer(module_name(path)))
    upward = sorted(name for name in imported_modules(path) if LAYERS.index(layer(name)) > here)
    assert not upward, f"{module_name(path)} ({LAYERS[here]}) imports {upward}"


def test_the_import_check_sees_lazy_imports(tmp_path):
    """The check itself can fail: a function-level import of the loop from core is caught."""
    late_import = "\n\ndef _late():\n    from digitsjax.run.loop import train_pipeline\n"
    probe = tmp_path / "model.py"
    probe.write_text((PACKAGE / "core" / "model.py").read_text() + late_import)
    assert "digitsjax.run.loop" in imported_modules(probe)
    assert LAYERS.index(layer("digitsjax.run.loop")) > LAYERS.index(layer("digitsjax.core.model"))


IMPURE = ("fcntl", "os", "shutil", "socket", "subprocess", "tempfile", "tensorflow",
          "tensorflow_datasets")
"""What touches files, locks, processes, the network or the environment, or is TensorFlow."""


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every module `path` imports, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=module_name)
def test_core_imports_nothing_that_touches_the_outside_world(path):
    """Core is pure: MNIST's files, locks and network probe are run's (run.mnist)."""
    assert not sorted(top_level_imports(path) & set(IMPURE)), module_name(path)


def test_the_purity_check_sees_lazy_and_dotted_imports(tmp_path):
    probe = tmp_path / "data.py"
    late_imports = ("\n\ndef _late():\n    import os.path\n"
                    "    from tensorflow_datasets import builder\n")
    probe.write_text((PACKAGE / "core" / "data.py").read_text() + late_imports)
    assert {"os", "tensorflow_datasets"} <= top_level_imports(probe)


def test_no_function_in_the_package_is_longer_than_sixty_lines():
    long = []
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not long


def test_the_command_module_holds_only_the_parser_and_the_commands():
    """The process's entry (digitsjax.main) and the output's text (the apps) live elsewhere."""
    lines = len((PACKAGE / "cli.py").read_text().splitlines())
    assert lines <= MAX_CLI_LINES, f"digitsjax/cli.py has {lines} lines"


def test_no_module_runs_source_text():
    """No `exec` or `eval` anywhere: what runs is what the modules say."""
    calls = []
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):  # exec(...), eval(...), builtins.exec(...)
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("exec", "eval"):
                    calls.append(f"{module_name(path)}:{node.lineno}: {name}")
    assert not calls


PROCESS_STATE = """
import json, logging, signal, sys
import jax
from absl import logging as absl_logging

def state():
    loggers = {name: (logging.getLogger(name).level, len(logging.getLogger(name).filters))
               for name in ("", "absl", "asyncio", "jax", "orbax")}
    return {"loggers": loggers, "absl_verbosity": absl_logging.get_verbosity(),
            "unraisablehook": repr(sys.unraisablehook), "excepthook": repr(sys.excepthook),
            "torch": "torch" in sys.modules,
            "signals": [repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)],
            "jax_config": {k: repr(v) for k, v in jax.config.values.items()}}

before = state()
for module in sys.argv[1:]:
    __import__(module)
print(json.dumps({"before": before, "after": state()}))
"""


def test_importing_every_module_changes_nothing_in_the_process():
    modules = [module_name(path) for path in package_modules() if path.stem != "__main__"]
    result = subprocess.run([sys.executable, "-c", PROCESS_STATE, *modules], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["after"] == report["before"]


REGISTRIES = [
    ("model.activation", model.ACTIVATIONS),
    ("model.output_activation", model.OUTPUT_ACTIVATIONS),
    ("model.init", model.INITIALIZERS),
    ("train.loss", losses.LOSSES),
    ("optimizer.name", optim.OPTIMIZERS),
    ("optimizer.schedule", optim.SCHEDULES),
    ("train.matmul_precision", model.MATMUL_PRECISIONS),
]


@pytest.mark.parametrize(("key", "registry"), REGISTRIES, ids=[k for k, _ in REGISTRIES])
def test_validation_lists_exactly_the_registry(key, registry):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as error:
        pipeline_from_dict({section: {name: "no_such_option"}})
    assert str(error.value).endswith(f"choose one of {', '.join(registry)}")


def test_an_option_added_to_a_registry_is_valid_at_once(monkeypatch):
    monkeypatch.setitem(model.ACTIVATIONS, "gelu", lambda x: x)
    assert pipeline_from_dict({"model": {"activation": "gelu"}}).model.activation == "gelu"
    assert config.pipeline_from_dict({}).model.activation == "relu"


def test_an_error_speaks_python_to_the_library_and_flags_to_the_command_line():
    error = UserError("the workdir holds another pipeline",
                      f"pass {errors.RESTART} or choose another with {errors.WORKDIR}; or "
                      f"{errors.setting('train.epochs', 3)}")
    assert (error.problem, str(error)) == (
        "the workdir holds another pipeline",
        "the workdir holds another pipeline; pass restart=True or choose another with the "
        "workdir argument; or "
        "pipeline key train.epochs = 3")
    assert error.render(COMMAND_LINE) == (
        "the workdir holds another pipeline; pass --restart or choose another with --workdir; or "
        "--set train.epochs=3")


def test_no_library_message_names_a_command_line_flag_of_train_evaluate_or_predict():
    """Remedies go through markers; a flag spelled out in the library would be wrong for
    Python callers (the CLI's own module and argument help are the exceptions)."""
    flags = ("--restart", "--workdir", "--checkpoint", "--mnist-dir", "--set ")
    offenders = []
    for path in package_modules():
        if path.stem in ("cli", "__main__") or path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    any(flag in node.value for flag in flags):
                offenders.append(f"{module_name(path)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders


def runtime_imports(path: Path) -> set[str]:
    """`imported_modules`, less the imports under `if TYPE_CHECKING:` (never executed)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and \
                node.test.id == "TYPE_CHECKING":
            node.body = []
    return modules_imported_by(tree)


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of the graph (module -> modules it imports), as a path; [] if there is none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return [*path[path.index(child):], child] if child in path else [node, child]
            if child not in state and (found := visit(child, [*path, child])):
                return found
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_no_two_modules_import_each_other_even_lazily():
    """A cycle hidden behind a function-level import still ties the modules into one: neither
    can be read, tested or moved without the other."""
    graph = {module_name(path): runtime_imports(path) - {module_name(path)}
             for path in package_modules()}
    assert import_cycle(graph) == []


def test_the_cycle_check_finds_a_lazy_cycle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) == []
