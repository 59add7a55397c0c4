"""Imports go one way: data → models → objectives → train | sample → serve.

Parses every module's imports (no execution) and fails on a back-edge, and on heavy
dependencies where they don't belong (TensorFlow on the inference path, optax in models).
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "action_gen"

# Subpackage -> the action_gen subpackages it may import.
ALLOWED = {
    "data": set(),
    "envs": {"data"},
    "models": {"data"},
    "objectives": {"data", "models"},
    "train": {"checkpoint", "data", "envs", "models", "objectives"},
    # The checkpoint *format* lives in action_gen/checkpoint.py; serving code reads it.
    "sample": {"checkpoint", "data", "models", "objectives"},
    "eval": {"data", "envs", "models", "objectives", "sample"},
    "serve": {"data", "models", "objectives", "sample"},
}
# Third-party modules forbidden per subpackage (the inference path stays TF-free).
FORBIDDEN_THIRD_PARTY = {
    "models": {"optax", "tensorflow", "tensorflow_datasets"},
    "objectives": {"optax", "tensorflow", "tensorflow_datasets"},
    "sample": {"tensorflow", "tensorflow_datasets"},
    "serve": {"tensorflow", "tensorflow_datasets"},
    "envs": {"tensorflow"},
}
TF_FREE_DATA_MODULES = {"schema.py", "normalize.py"}


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


def _violations():
    for sub, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "action_gen" and len(parts) > 1:
                    target = parts[1]
                    if target == sub or target in allowed:
                        continue
                    if ".".join(parts[1:3]) in allowed:
                        continue
                    if len(parts) == 2 and name.replace("action_gen.", "") in {
                        a.split(".")[0] for a in allowed
                    }:
                        continue
                    yield f"{path.relative_to(PACKAGE.parent)} imports {name}"
                elif parts[0] in FORBIDDEN_THIRD_PARTY.get(sub, set()):
                    yield f"{path.relative_to(PACKAGE.parent)} imports {parts[0]}"
    for name in TF_FREE_DATA_MODULES:
        path = PACKAGE / "data" / name
        if path.exists():
            for imported in _imports(path):
                if imported.split(".")[0] in {"tensorflow", "tensorflow_datasets"}:
                    yield f"{path.relative_to(PACKAGE.parent)} imports {imported}"


def test_no_back_edges():
    assert list(_violations()) == []


def test_inference_path_loads_without_tensorflow():
    """The device machines have no TensorFlow: models/, objectives/ and sample/ must import
    (transitively) without it."""
    import subprocess
    import sys

    code = (
        "import sys; import action_gen.sample.policy, action_gen.objectives.diffusion, "
        "action_gen.objectives.regression, action_gen.models.unet1d; "
        "bad = [m for m in sys.modules "
        "       if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
