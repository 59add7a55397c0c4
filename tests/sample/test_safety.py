"""Safety filter: position limits, velocity limit, workspace box, each reported."""

import numpy as np
import pytest

from action_gen.sample.safety import SafetyFilter


def test_inside_all_limits_passes_unchanged():
    f = SafetyFilter(2, position_low=-1, position_high=1, max_velocity=1.0, control_dt=0.1)
    out, report = f.apply([0.2, -0.3])
    np.testing.assert_allclose(out, [0.2, -0.3], rtol=1e-6)
    assert not report.clipped and report.max_correction == 0.0
    assert report.describe() == "no clipping"


def test_position_limits_clip_per_dimension():
    f = SafetyFilter(3, position_low=[-1, -0.5, 0], position_high=[1, 0.5, 2])
    out, report = f.apply([1.5, 0.2, -0.1])
    np.testing.assert_allclose(out, [1.0, 0.2, 0.0])
    assert report.clipped
    np.testing.assert_array_equal(report.position, [True, False, True])
    assert "position limit on dims [0, 2]" in report.describe()
    np.testing.assert_allclose(report.max_correction, 0.5)


def test_velocity_limit_bounds_the_step_from_the_last_command():
    f = SafetyFilter(2, max_velocity=[1.0, 2.0], control_dt=0.1)  # max step 0.1, 0.2
    first, r0 = f.apply([0.0, 0.0])  # no previous command: nothing to limit
    assert not r0.clipped
    out, report = f.apply([0.5, 0.15])
    np.testing.assert_allclose(out, [0.1, 0.15], rtol=1e-6)
    np.testing.assert_array_equal(report.velocity, [True, False])
    out, _ = f.apply([0.5, 0.15])  # keeps approaching at the limited rate
    np.testing.assert_allclose(out, [0.2, 0.15], rtol=1e-6)
    f.reset()
    out, report = f.apply([0.9, -0.9])  # new episode: no previous command
    assert not report.clipped


def test_workspace_box_applies_last():
    f = SafetyFilter(
        3,
        max_velocity=10.0,
        control_dt=0.1,
        workspace_dims=[0, 1],
        workspace_low=[-0.5, -0.5],
        workspace_high=[0.5, 0.5],
    )
    f.apply([0.0, 0.0, 0.0])
    out, report = f.apply([0.8, -0.2, 3.0])  # dim 2 is not in the box
    np.testing.assert_allclose(out, [0.5, -0.2, 1.0], rtol=1e-6)  # dim 2 velocity-limited
    np.testing.assert_array_equal(report.workspace, [True, False, False])
    np.testing.assert_array_equal(report.velocity, [False, False, True])
    assert "workspace limit on dims [0]" in report.describe()
    assert "velocity limit on dims [2]" in report.describe()


def test_batched_commands_and_bad_input():
    f = SafetyFilter(2, position_low=-1, position_high=1)
    out, report = f.apply(np.array([[0.0, 2.0], [-3.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(report.position, [[False, True], [True, False]])
    with pytest.raises(ValueError, match="non-finite"):
        f.apply([np.nan, 0.0])
    with pytest.raises(ValueError, match="A=2"):
        f.apply([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="control_dt"):
        SafetyFilter(2, max_velocity=1.0)
    with pytest.raises(ValueError, match="workspace_low"):
        SafetyFilter(2, workspace_dims=[0])
    with pytest.raises(ValueError, match="out of range"):
        SafetyFilter(2, workspace_dims=[2], workspace_low=[0], workspace_high=[1])
