"""The package layout: the library never imports the flowers workflow, and no module imports itself back."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tfqat"

# What each library sub-package may import from tfqat, besides itself and the top-level helpers.
LIBRARY = {
    "quantization": set(),
    "data": set(),
    "graph": {"quantization"},  # the rewrite makes tfqat's Sigmoid and ScalarOp layers
    "post_training": {"quantization", "graph", "data"},
    "tflite": {"quantization", "graph", "data"},
    "evaluation": {"tflite", "data"},  # runs exported models on labelled folders
    "integer": {"tflite"},  # the executor reads tflite.ops (no TensorFlow); its comparison runs tflite.litert
    "espdl": {"integer", "tflite"},  # reads the int8 .tflite, runs the integer reference for the embedded test
}
HELPERS = {  # pure helpers
    "tfqat", "tfqat._keras", "tfqat.files", "tfqat.targets", "tfqat.fixedpoint", "tfqat.preprocessing", "tfqat.progress",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: set) -> set:
    """The tfqat modules a file imports anywhere in it (lazy imports inside functions count too)."""
    return _imports_in(ast.parse(path.read_text()), known)


def _imports_in(tree: ast.AST, known: set) -> set:
    """The tfqat modules imported anywhere inside an AST node."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from tfqat.flowers import data` imports the module tfqat.flowers.data
            found.update(f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known)
    return {name for name in found if name == "tfqat" or name.startswith("tfqat.")}


def _graph() -> dict:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


@pytest.mark.parametrize("package", sorted(LIBRARY))
def test_library_packages_import_only_the_library_below_them(package):
    allowed = {f"tfqat.{p}" for p in LIBRARY[package] | {package}}
    graph = _graph()
    members = [name for name in graph if name == f"tfqat.{package}" or name.startswith(f"tfqat.{package}.")]
    assert members, f"no modules found in tfqat/{package}"
    wrong = {
        name: sorted(imported for imported in graph[name]
                     if imported not in HELPERS and not any(imported == a or imported.startswith(a + ".") for a in allowed))
        for name in members
    }
    assert {name: w for name, w in wrong.items() if w} == {}


def test_no_library_module_imports_the_workflow_or_the_cli():
    graph = _graph()
    library = [name for name in graph if name.split(".")[1:2] and name.split(".")[1] in LIBRARY]
    library += ["tfqat.api", "tfqat.distribute", "tfqat.files", "tfqat._keras"]
    offending = {
        name: sorted(i for i in graph[name] if i.startswith(("tfqat.flowers", "tfqat.cli")))
        for name in library
    }
    assert {name: o for name, o in offending.items() if o} == {}


def _find_cycle(edges: dict):
    """One import cycle of the graph (a list of modules, first == last), or None."""
    state = {}

    def visit(name, path):
        state[name] = "open"
        for nxt in sorted(edges.get(name, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[name] = "done"
        return None

    for name in sorted(edges):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    # tfqat/__init__.py re-exports the public API: every module "imports" it as a package parent, not a cycle.
    edges = {name: {i for i in imported if i in graph and i != "tfqat"} for name, imported in graph.items()}
    cycle = _find_cycle(edges)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_graph_check_sees_a_planted_cycle(tmp_path):
    """The checks are not vacuous: lazy imports are found, and a cycle through them is reported."""
    (tmp_path / "a.py").write_text("from tfqat.flowers import images\n")
    (tmp_path / "b.py").write_text("def f():\n    from tfqat.flowers.data import Record\n")
    known = {"tfqat.flowers.images", "tfqat.flowers.data"}
    assert "tfqat.flowers.images" in _imports(tmp_path / "a.py", known)
    assert "tfqat.flowers.data" in _imports(tmp_path / "b.py", known)
    planted = {"tfqat.flowers.data": {"tfqat.flowers.images"}, "tfqat.flowers.images": {"tfqat.flowers.data"}}
    assert _find_cycle(planted) == ["tfqat.flowers.data", "tfqat.flowers.images", "tfqat.flowers.data"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


# The sub-commands that work on any model, and the cli helpers they call; only `run` and `study` belong to the workflow.
GENERIC_COMMANDS = (
    "_verify", "_evaluate", "_export", "_quantize", "_debug", "_export_and_verify", "_load_float_model", "_execute",
    "_micro",
)


def _workflow_imports(source: str, names, known: set) -> dict:
    """The tfqat.flowers modules each named top-level function of `source` imports in its body."""
    functions = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    assert set(names) <= set(functions), f"functions not found: {sorted(set(names) - set(functions))}"
    return {
        name: sorted(i for i in _imports_in(functions[name], known) if i == "tfqat.flowers" or i.startswith("tfqat.flowers."))
        for name in names
    }


def test_the_generic_commands_do_not_import_the_workflow():
    found = _workflow_imports((PACKAGE / "cli.py").read_text(), GENERIC_COMMANDS, set(_modules()))
    assert {name: i for name, i in found.items() if i} == {}


def test_the_generic_command_check_sees_a_planted_workflow_import():
    """Not vacuous: a lazy import of the workflow inside a command's body, however nested, is found."""
    planted = (
        "def _quantize(args):\n"
        "    if args.images:\n"
        "        from tfqat.flowers.images import folder_images\n"
        "def _debug(args):\n"
        "    from tfqat import flowers\n"
        "def _evaluate(args):\n"
        "    import tfqat.flowers.evaluate\n"
    )
    known = {"tfqat.flowers", "tfqat.flowers.images", "tfqat.flowers.evaluate"}
    found = _workflow_imports(planted, ("_quantize", "_debug", "_evaluate"), known)
    assert found == {
        "_quantize": ["tfqat.flowers.images"],
        "_debug": ["tfqat.flowers"],
        "_evaluate": ["tfqat.flowers.evaluate"],
    }
