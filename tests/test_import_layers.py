"""Imports go one way: data → models → objectives → train | sample → serve.

`check(root)` parses every module's imports under `root` (no execution) and returns the
violations; the tests run it on this checkout and on temporary copies with a planted fault.
It fails on:
  - a back-edge between subpackages (the ALLOWED table), and `sample/` or `serve/` reaching
    `train/` at all (directly or through any chain of imports);
  - an import cycle among modules (e.g. models/text.py ↔ models/transformer.py);
  - relative imports (`from . import x`): every edge is spelled out in full;
  - configs/*.py importing anything but ml_collections (and each other);
  - heavy third-party dependencies where they don't belong (TensorFlow on the inference
    path, optax in models).

`from action_gen import train` imports the package `action_gen.train` (its __init__), and
`from action_gen.models import layers` the module `action_gen.models.layers`: each import is
resolved to the module it loads, so the subpackage form hides no edge.
"""

import ast
import dataclasses
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "action_gen"

# Layer (a subpackage, or a top-level module of action_gen) -> the layers it may import.
ALLOWED = {
    # The front door (user errors, logs, progress): stdlib only, usable from any layer.
    "cli": set(),
    # The config schema (every field's default and meaning): ml_collections only.
    "config_schema": set(),
    "data": {"cli"},
    "envs": {"cli", "data"},
    "models": {"data"},
    "objectives": {"data", "models"},
    # The checkpoint *format* (orbax I/O): what train/ writes and sample/ reads, so
    # sample/ never loads the trainer.
    "checkpoint": set(),
    # The compatibility rules (resume, init_from, distillation): they know the objectives'
    # sampling-only fields and ODE settings.
    "compat": {"config_schema", "data", "objectives"},
    # A run directory's owner: its checkpoints and the one parameter-restore path.
    "run": {"checkpoint", "config_schema", "data", "models"},
    "train": {
        "checkpoint",
        "cli",
        "compat",
        "config_schema",
        "data",
        "models",
        "objectives",
        "run",
    },
    "sample": {"checkpoint", "compat", "config_schema", "data", "models", "objectives", "run"},
    "eval": {
        "checkpoint",
        "cli",
        "config_schema",
        "data",
        "envs",
        "models",
        "objectives",
        "run",
        "sample",
    },
    "serve": {"checkpoint", "data", "models", "objectives", "sample"},
    # Command-line converters of other projects' formats (openpi checkpoints): they write
    # our checkpoint format and check it through the served policy.
    "tools": {
        "checkpoint",
        "cli",
        "compat",
        "config_schema",
        "data",
        "models",
        "objectives",
        "run",
        "sample",
        "train",
    },
    # The command-line entry point dispatches to every mode.
    "main": {
        "checkpoint",
        "cli",
        "compat",
        "config_schema",
        "data",
        "envs",
        "eval",
        "models",
        "objectives",
        "run",
        "sample",
        "serve",
        "train",
    },
}
# Layers that must not reach `train` by any chain of imports: serving loads no trainer.
INFERENCE_LAYERS = ("sample", "serve")
# Third-party modules forbidden per layer (the inference path stays TF-free).
FORBIDDEN_THIRD_PARTY = {
    "models": {"optax", "tensorflow", "tensorflow_datasets"},
    "objectives": {"optax", "tensorflow", "tensorflow_datasets"},
    "sample": {"tensorflow", "tensorflow_datasets"},
    "serve": {"tensorflow", "tensorflow_datasets"},
    "envs": {"tensorflow"},
}
TENSORFLOW = {"tensorflow", "tensorflow_datasets"}
TF_FREE_DATA_MODULES = {
    "action_gen.data.schema",
    "action_gen.data.normalize",
    "action_gen.data.memory",  # the training stream of machines without TensorFlow
    "action_gen.data.sources",
}
# What a config file may import (top-level names): configs load instantly, without jax.
CONFIG_ALLOWED = {"ml_collections", "configs"}
# ...and the schema they extend, which itself imports only ml_collections ("config_schema"
# may import no layer, ALLOWED above) and loads without jax.
CONFIG_ALLOWED_MODULES = {"action_gen.config_schema"}


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported name as written: `import module` (name None) or `from module import
    name`; level > 0 for a relative import."""

    line: int
    module: str
    name: str | None = None
    level: int = 0

    def __str__(self):
        dots = "." * self.level
        if self.name is None:
            return f"import {self.module}"
        return f"from {dots}{self.module} import {self.name}"


def parse_imports(source: str, filename: str = "<source>") -> list[Import]:
    """Every import in `source`, at any depth (function-level imports are edges too)."""
    imports = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            imports += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports += [
                Import(node.lineno, node.module or "", alias.name, node.level)
                for alias in node.names
            ]
    return imports


def discover(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Module name -> file, for every module of the package under `root`."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def resolve(imp: Import, modules: set[str]) -> str | None:
    """The package module that `imp` loads, or None (third party, stdlib, relative)."""
    if imp.level:
        return None
    if imp.name is None:
        return imp.module if imp.module in modules else None
    submodule = f"{imp.module}.{imp.name}"
    if submodule in modules:  # `from action_gen import train`: the package itself
        return submodule
    return imp.module if imp.module in modules else None


def layer(module: str) -> str | None:
    """`action_gen.<layer>...` -> layer; None for the package root (action_gen/__init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph(root: pathlib.Path):
    """(modules, {module: [(Import, target module), ...]}) over the package under root."""
    modules = discover(root)
    graph = {}
    for module, path in modules.items():
        imports = parse_imports(path.read_text(), str(path))
        graph[module] = [(imp, resolve(imp, set(modules))) for imp in imports]
    return modules, graph


def _where(root, path, imp):
    return f"{path.relative_to(root)}:{imp.line}: {imp}"


def _find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [m_0, ..., m_k, m_0] per strongly connected component that has one."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                components.append(component)

    for v in sorted(edges):  # recursion depth <= the number of modules (~100)
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        start = min(component)
        # Shortest way back to `start` inside the component (breadth-first).
        parent, frontier = {start: None}, [start]
        while frontier and start not in {w for v in frontier for w in edges[v]}:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & component):
                    if w not in parent:
                        parent[w] = v
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in edges[v])
        path = [last]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        cycles.append([*reversed(path), start])
    return sorted(cycles)


def check(root: pathlib.Path) -> list[str]:
    """All import-rule violations of the package (and configs/) under `root`."""
    root = pathlib.Path(root)
    modules, graph = import_graph(root)
    violations = []
    edges = {m: set() for m in modules}
    for module, imports in graph.items():
        path, src = modules[module], layer(module)
        for imp, target in imports:
            where = _where(root, path, imp)
            if imp.level:
                violations.append(f"{where}: relative import (spell out the module)")
                continue
            top = imp.module.split(".")[0]
            if target is None:
                if top in FORBIDDEN_THIRD_PARTY.get(src, ()):
                    violations.append(f"{where}: {src}/ may not import {top}")
                elif module in TF_FREE_DATA_MODULES and top in TENSORFLOW:
                    violations.append(f"{where}: {module} must load without TensorFlow")
                continue
            edges[module].add(target)
            dst = layer(target)
            if src is None or dst is None or dst == src:
                continue
            if src not in ALLOWED:
                violations.append(f"{where}: {src} is not in the ALLOWED layer table")
            elif dst not in ALLOWED[src]:
                violations.append(f"{where}: {src} may not import {dst}")

    for cycle in _find_cycles(edges):
        violations.append("import cycle: " + " -> ".join(cycle))

    # Inference layers must not reach train/ by any chain (ALLOWED already forbids the
    # direct edge; this also holds if the table is loosened elsewhere).
    for module in sorted(m for m in modules if layer(m) in INFERENCE_LAYERS):
        parent, frontier = {module: None}, [module]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v]):
                    if w not in parent:
                        parent[w] = v
                        nxt.append(w)
            frontier = nxt
        reached = sorted(m for m in parent if layer(m) == "train")
        if reached:
            chain = [reached[0]]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])
            violations.append("inference path loads the trainer: " + " -> ".join(chain[::-1]))

    for path in sorted((root / "configs").glob("*.py")):
        for imp in parse_imports(path.read_text(), str(path)):
            where = _where(root, path, imp)
            if imp.level:
                violations.append(f"{where}: relative import (spell out the module)")
            elif imp.module.split(".")[0] in CONFIG_ALLOWED:
                continue
            elif _config_import_target(imp) not in CONFIG_ALLOWED_MODULES:
                allowed = sorted(CONFIG_ALLOWED | CONFIG_ALLOWED_MODULES)
                violations.append(f"{where}: configs import only {allowed}")
    return violations


def _config_import_target(imp: Import) -> str:
    """The module a config file's import loads: `from action_gen import config_schema` and
    `import action_gen.config_schema` both load action_gen.config_schema."""
    return imp.module if imp.name is None else f"{imp.module}.{imp.name}"


def test_import_rules_hold():
    assert check(ROOT) == []


def test_every_layer_is_in_the_table():
    layers = {layer(m) for m in discover(ROOT)} - {None}
    assert layers <= set(ALLOWED), sorted(layers - set(ALLOWED))


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory):
    """A copy of the package and configs (Python files only), to plant faults in."""
    root = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (PACKAGE, "configs"):
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    return root


@pytest.mark.parametrize(
    "file,line,expected",
    [
        # A cycle inside a package: text.py already imports layers.py.
        ("action_gen/models/layers.py", "from action_gen.models import text", "import cycle"),
        ("action_gen/sample/policy.py", "from action_gen.train import loop", "sample may not"),
        # The subpackage-as-a-name form resolves to action_gen.train (its __init__).
        ("action_gen/serve/server.py", "from action_gen import train", "serve may not"),
        ("action_gen/data/normalize.py", "from . import schema", "relative import"),
        ("configs/common.py", "import jax", "configs import only"),
        ("configs/common.py", "from action_gen.data import schema", "configs import only"),
        ("action_gen/models/unet1d.py", "import optax", "models/ may not import optax"),
    ],
)
def test_planted_faults_are_caught(tree_copy, file, line, expected):
    path = tree_copy / file
    original = path.read_text()
    before = set(check(tree_copy))
    try:
        path.write_text(original + f"\n{line}\n")
        new = set(check(tree_copy)) - before
    finally:
        path.write_text(original)
    assert any(expected in v for v in new), (expected, sorted(new))


def test_inference_path_reaching_train_transitively_is_caught(tmp_path):
    """sample → models → train: each edge's own layer check flags models → train; the
    reachability check names the whole chain from sample/."""
    for name, source in {
        "__init__.py": "",
        "models/__init__.py": "",
        "models/net.py": "from action_gen.train import step\n",
        "train/__init__.py": "",
        "train/step.py": "",
        "sample/__init__.py": "",
        "sample/policy.py": "from action_gen.models import net\n",
    }.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(source)
    violations = check(tmp_path)
    assert any("models may not import train" in v for v in violations), violations
    want = (
        "inference path loads the trainer: action_gen.sample.policy -> action_gen.models.net"
        " -> action_gen.train.step"
    )
    assert want in violations, violations


def test_resolve_forms():
    modules = {"action_gen", "action_gen.train", "action_gen.models", "action_gen.models.layers"}
    (imp,) = parse_imports("from action_gen import train")
    assert resolve(imp, modules) == "action_gen.train"
    (imp,) = parse_imports("from action_gen.models.layers import dense")
    assert resolve(imp, modules) == "action_gen.models.layers"
    (imp,) = parse_imports("import action_gen.models.layers as L")
    assert resolve(imp, modules) == "action_gen.models.layers"
    (imp,) = parse_imports("from jax import numpy")
    assert resolve(imp, modules) is None
    (imp,) = parse_imports("from .layers import dense")
    assert imp.level == 1 and resolve(imp, modules) is None


def test_inference_path_loads_without_tensorflow():
    """The device machines have no TensorFlow: models/, objectives/ and sample/ must import
    (transitively) without it, and so must the train loop and the evaluation, which a run
    with data.loader='memory' (data/memory.py) uses there."""
    code = (
        "import sys; import action_gen.sample.policy, action_gen.objectives.diffusion, "
        "action_gen.objectives.regression, action_gen.models.unet1d, action_gen.train.loop, "
        "action_gen.eval.evaluate, action_gen.data.memory; "
        "bad = [m for m in sys.modules "
        "       if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
