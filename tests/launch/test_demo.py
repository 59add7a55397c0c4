"""launch/demo.py's self-check: each policy's result against the expected range that the
README's first table states."""

import importlib.util
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "launch/demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(success, collision, left, right):
    return {"success_rate": success, "collision_rate": collision,
            "mode_left_fraction": left, "mode_right_fraction": right}  # fmt: skip


def test_self_check_lines():
    demo = _demo()
    ok, line = demo.check_result("diffusion_unet_ddim10", _result(1.0, 0.0, 0.47, 0.53))
    assert ok and line == (
        "diffusion_unet_ddim10: 100% success, 0% collisions, left 47% / right 53% — as expected"
    )
    ok, line = demo.check_result("diffusion_unet_ddim10", _result(0.96, 0.04, 0.46, 0.50))
    assert not ok and line.endswith("— outside the expected range: collisions 4% > 2%")
    ok, line = demo.check_result("diffusion_unet_ddim10", _result(0.9, 0.0, 0.9, 0.0))
    assert not ok and "success 90% < 95%" in line and "left 90% > 65%" in line
    assert "right 0% < 35%" in line
    ok, line = demo.check_result("regression_unet", _result(0.0, 1.0, 0.0, 0.0))
    assert ok and line.endswith("as expected")
    assert not demo.check_result("regression_unet", _result(0.6, 0.4, 0.3, 0.3))[0]


def test_readme_states_the_checked_ranges():
    """The README's first table names the same bounds the demo checks."""
    readme = open(os.path.join(REPO, "README.md")).read()
    expected = _demo().EXPECTED
    diffusion, regression = expected["diffusion_unet_ddim10"], expected["regression_unet"]
    bounds = re.search(r"expected range:\s*[^\n]*", readme)
    assert bounds, "README: no 'expected range:' line above the make-demo table"
    line = bounds.group(0)
    assert f"success ≥ {diffusion['success_rate'][0]:.0%}" in line
    assert f"collisions ≤ {diffusion['collision_rate'][1]:.0%}" in line
    low, high = diffusion["mode_left_fraction"]
    assert f"each side {low:.0%}–{high:.0%}" in line
    assert f"regression collisions ≥ {regression['collision_rate'][0]:.0%}" in line
