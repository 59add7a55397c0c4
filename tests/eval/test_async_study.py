"""Delay study plumbing on a tiny random-weight flow policy (numbers are meaningless here;
the real table comes from a trained run, see the module docstring)."""

import numpy as np
import pytest

from action_gen.eval import async_study
from tests.serve import tiny_policy


def test_boundary_jerk_straddles_the_switch():
    a = np.zeros((6, 1))
    a[3:] = 1.0  # a step from the old plan (0) to the new one (1) at t = 3
    switches = np.zeros(6, bool)
    switches[[0, 3]] = True  # t = 0 has no history: skipped
    # d3 = a4 - 3 a3 + 3 a2 - a1 = 1 - 3 = -2
    assert async_study.boundary_jerk(a, switches) == [4.0]
    smooth = np.linspace(0, 1, 6)[:, None]
    np.testing.assert_allclose(async_study.boundary_jerk(smooth, switches), [0.0], atol=1e-12)


def test_study_rows_and_table(tmp_path):
    policy = tiny_policy.make_tiny_policy()
    rows = async_study.run_study(
        policy, delays=(0, 2), num_episodes=3, exec_horizon=4, max_steps=12
    )
    assert [(r["mode"], r["delay"]) for r in rows] == [
        (m, d) for m in ("sync", "async", "ensemble", "rtc") for d in (0, 2)
    ]
    by = {(r["mode"], r["delay"]): r for r in rows}
    for r in rows:
        successes = r["success_rate"] * 3  # a count of the 3 episodes
        assert successes == pytest.approx(round(successes)) and 0 <= round(successes) <= 3
        assert np.isfinite(r["boundary_jerk"]) and r["boundary_jerk"] >= 0.0
        assert r["policy_calls"] >= 1
    # Only sync waits for inference (holds its command); async modes never starve here.
    assert by[("sync", 2)]["held_steps"] > 0 and by[("sync", 0)]["held_steps"] == 0
    assert by[("async", 2)]["held_steps"] == 0 and by[("rtc", 2)]["held_steps"] == 0
    # Ensembling asks every step; the others every exec_horizon steps.
    steps = by[("ensemble", 0)]["control_steps"]
    assert by[("ensemble", 0)]["policy_calls"] == steps
    steps = by[("async", 0)]["control_steps"]
    assert by[("async", 0)]["policy_calls"] == -(-steps // 4)
    table = async_study.markdown_table(rows)
    assert "| RTC |" in table and "d=2" in table and "naive async" in table
