"""benchmarks/first_chunk_modes.py on scripted chunks whose outcome is known: the straight
line (a blend: it hits the disc), detours on either side (clear of it), and a mix."""

import numpy as np
import pytest

from action_gen.data import schema
from action_gen.envs import obstacle
from benchmarks import first_chunk_modes as fcm

H = 16
START_KWARGS = dict(eval_seed=100_000, obs_horizon=2)  # the evaluation's defaults


def _detour(start: np.ndarray, side: int) -> np.ndarray:
    """[H, 2] targets: diagonally out to `side` of the disc (LEFT of the upward travel is
    -x), then straight up."""
    x = -0.45 * side
    corner = np.array([x, -0.35])
    out = start + np.linspace(0, 1, 9)[1:, None] * (corner - start)
    up = corner + np.linspace(0, 1, 9)[1:, None] * (np.array([x, 0.1]) - corner)
    return np.concatenate([out, up]).astype(np.float32)


def _straight(start: np.ndarray) -> np.ndarray:
    goal = np.array(obstacle.GOAL)
    return (start + np.linspace(0, 1, H + 1)[1:, None] * (goal - start) / 2).astype(np.float32)


def _sample_fn(kinds):
    """Chunks [B, H, 2] from each row's start (the state's position), row b of kind
    kinds[b % len(kinds)]: "left", "right" or "straight"."""

    def sample(observation, seed):
        del seed
        state = observation[schema.OBS_STATE]
        assert state.ndim == 3 and observation[schema.OBS_PAD_MASK][:, -1].all()
        rows = []
        for b, pos in enumerate(state[:, -1, obstacle.POS]):
            kind = kinds[b % len(kinds)]
            if kind == "straight":
                rows.append(_straight(pos))
            else:
                rows.append(_detour(pos, obstacle.LEFT if kind == "left" else obstacle.RIGHT))
        return np.stack(rows)

    return sample


@pytest.mark.parametrize(
    "kinds,collision,blend,left,right",
    [
        (["straight"], 1.0, 1.0, 0.0, 0.0),
        (["left"], 0.0, 0.0, 1.0, 0.0),
        (["right"], 0.0, 0.0, 0.0, 1.0),
        (["left", "right", "straight", "left"], 0.25, 0.25, 0.5, 0.25),
    ],
)
def test_scripted_chunks(kinds, collision, blend, left, right):
    stats = fcm.first_chunk_modes(
        _sample_fn(kinds), num_starts=3, samples_per_start=8, **START_KWARGS
    )
    assert stats["chunks"] == 24
    assert stats["open_loop_collision_rate"] == pytest.approx(collision)
    assert stats["blend_fraction"] == pytest.approx(blend)
    assert stats["left_fraction"] == pytest.approx(left)
    assert stats["right_fraction"] == pytest.approx(right)
    quantiles = stats["lateral_end_quantiles"]
    assert quantiles == sorted(quantiles) and len(quantiles) == 5


def test_wrong_chunk_shape_is_named():
    with pytest.raises(ValueError, match=r"want \[B, H, 2\]"):
        fcm.first_chunk_modes(
            lambda obs, seed: np.zeros((obs[schema.OBS_STATE].shape[0], H, 3)),
            num_starts=1,
            samples_per_start=2,
            **START_KWARGS,
        )
