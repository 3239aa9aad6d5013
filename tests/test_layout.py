"""The package's shape: imports point one way, light imports stay light, modules stay small."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import paragrad

SOURCE = Path(paragrad.__file__).parent
HEAVY = (
    "paragrad.bench",
    "matplotlib",
    "torch",
    "ray",
    "scipy",
    "sklearn",
    "tensorboard",
    "mlflow",
    "onnx",
    "onnxruntime",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "fastapi",
    "paragrad.serving.app",
)
# The layers, bottom up: a module may import its own layer and those below it, never one
# above. The package's root re-exports lazily and is left out.
LAYERS = (
    ("paragrad.errors",),
    ("paragrad.core",),
    ("paragrad.data",),
    ("paragrad.models", "paragrad.optim", "paragrad.engines", "paragrad.callbacks"),
    ("paragrad.training",),
    ("paragrad.inference",),
    ("paragrad.serving", "paragrad.onnx_export", "paragrad.sklearn"),
    ("paragrad.cli", "paragrad.__main__"),
    ("paragrad.bench",),
)
# The layers that may choose an engine: the training loop, inference and the command line.
# The benchmarks drive engines directly, as the tests do; only ``paragrad bench`` loads them.
ENGINE_USERS = ("paragrad.training", "paragrad.inference", "paragrad.cli", "paragrad.bench")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every module of the package by name, with its file."""
    found = {"paragrad": SOURCE / "__init__.py"}
    for info in pkgutil.walk_packages([str(SOURCE)], prefix="paragrad."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None
        found[info.name] = Path(spec.origin)
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports at module level (lazy imports inside
    functions, for heavy optional dependencies, are not part of the graph)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {target for target in targets if target in modules and target != name}


def test_every_module_imports():
    for name in _modules():
        if not name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(name)


def test_the_import_graph_has_no_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package's __init__ re-exports its modules: importing one of them goes through it,
    # so edges into a package stand for edges into what it re-exports.
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import circle: " + " -> ".join(
            [*visiting[visiting.index(name) :], name]
        )
        visiting.append(name)
        for target in graph[name]:
            if not target.startswith(name + "."):  # a package importing its own parts is no circle
                visit(target)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def _layer(name: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if any(name == top or name.startswith(top + ".") for top in layer):
            return rank
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_every_module_is_in_a_layer_and_imports_only_downward():
    modules = _modules()
    for name, path in modules.items():
        if name == "paragrad":
            continue
        rank = _layer(name)
        imported = [target for target in _imports(name, path, modules) if target != "paragrad"]
        above = sorted(target for target in imported if _layer(target) > rank)
        assert not above, f"{name} (layer {rank}) imports {above}, from a layer above"


def test_only_the_training_inference_and_cli_layers_import_the_engines():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith(("paragrad.engines", *ENGINE_USERS)):
            continue
        engines = {
            target for target in _imports(name, path, modules) if target.startswith("paragrad.engines")
        }
        assert not engines, f"{name} imports {sorted(engines)}"


def test_nothing_outside_the_engines_branches_on_an_engine_name():
    for name, path in _modules().items():
        if name.startswith(("paragrad.engines", "paragrad.bench")):
            continue
        text = path.read_text()
        for engine in ('"ray"', '"local"', '"serial"'):
            assert f"== {engine}" not in text and f"!= {engine}" not in text, f"{name} compares with {engine}"


@pytest.mark.parametrize(
    "code",
    [
        "import paragrad",
        "import sys; from paragrad.cli import main; sys.argv = ['paragrad', 'predict', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass",
    ],
)
def test_light_entry_points_do_not_import_heavy_modules(code):
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [name for name in loaded if name.startswith(HEAVY)]
    assert not heavy, f"{code.splitlines()[0]} imported {heavy[:10]}"


def test_no_file_is_over_the_limit():
    for path in _modules().values():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_FILE_LINES, f"{path.relative_to(SOURCE.parent)} has {lines} lines"


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring left out: a public function's keyword
    arguments, one a line, are its interface, documented, not logic to split."""
    assert node.end_lineno is not None
    body = node.body
    if (
        len(body) > 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def test_no_function_is_over_the_limit():
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _function_lines(node)
                assert lines <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name} has {lines} lines"


def test_the_grpc_protocol_module_imports_beside_tritons_client():
    """Triton's client registers the protocol's 'inference' messages in protobuf's default
    pool; ours must not collide with them, whichever is imported first."""
    code = (
        "import paragrad.serving.protocol.open_inference_pb2, tritonclient.grpc; "
        "import tritonclient.grpc as t; import importlib, sys; "
        "sys.modules.pop('paragrad.serving.protocol.open_inference_pb2'); "
        "importlib.import_module('paragrad.serving.protocol.open_inference_pb2')"
    )
    pytest.importorskip("tritonclient.grpc")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
