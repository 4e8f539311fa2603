"""The layering of the project, checked on the source with ast (docs/DESIGN.md, "Layers").

- lib/ is the ground floor: no module under lib/ imports a method package (fgfa, lstm_ssd, m2det) or the
  recipe (experiments), at module level or inside a function;
- method packages never import each other (nor the recipe above them);
- no import cycle between the project's modules, function-level imports included.
Every import statement counts; ``importlib.import_module`` with a literal name does too.
"""
import ast
import os

import pytest

from lib.config import PROJECT_ROOT

PACKAGES = ("lib", "fgfa", "lstm_ssd", "m2det", "experiments")
METHODS = ("fgfa", "lstm_ssd", "m2det")


def _module_name(path):
    rel = os.path.relpath(path, PROJECT_ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _modules():
    """{module name: path} of every Python file of the project's packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(PROJECT_ROOT, package)):
            if "__pycache__" in folder:
                continue
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found[_module_name(path)] = path
    return found


def _imports(path, module, modules):
    """(imported project module, line) of every import in the file, resolved to the deepest module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    out = []

    def add(name, line):
        if name.split(".")[0] not in PACKAGES:
            return
        while name and name not in modules:       # lib.dataset.load_dataset -> lib.dataset
            name = name.rpartition(".")[0]
        if name:
            out.append((name, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:                   # "from . import train": the submodule itself
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source, node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            add(node.args[0].value, node.lineno)
    return out


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}, modules


def test_lib_imports_no_method_package_and_methods_import_no_other(graph):
    edges, _ = graph
    violations = []
    for module, imports in edges.items():
        layer = module.split(".")[0]
        for target, line in imports:
            other = target.split(".")[0]
            if layer == "lib" and other in METHODS + ("experiments",):
                violations.append(f"{module}:{line} imports {target} (lib/ is the ground floor)")
            if layer in METHODS and other != layer and other in METHODS + ("experiments",):
                violations.append(f"{module}:{line} imports {target} (methods never import each other)")
    assert not violations, "\n".join(violations)


def test_no_import_cycles(graph):
    edges, _ = graph
    adjacency = {m: sorted({t for t, _ in imports if t != m}) for m, imports in edges.items()}
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in adjacency.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(adjacency):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The oracle of the two tests above: a hand-written module with each kind of import."""
    path = tmp_path / "probe.py"
    path.write_text("import os\nfrom . import family\n\ndef f():\n    from fgfa.train import build_model\n"
                    "    import importlib\n    importlib.import_module('m2det.cli')\n")
    modules = {"lib.probe": str(path), "lib.family": "x", "fgfa.train": "y", "m2det.cli": "z"}
    found = _imports(str(path), "lib.probe", modules)
    assert sorted(found) == [("fgfa.train", 5), ("lib.family", 2), ("m2det.cli", 7)]
