"""Scalar summaries of a `run_rollouts` result (all plain Python numbers, JSON ready)."""

from __future__ import annotations

from typing import Any

import numpy as np

from action_gen.envs import obstacle


def action_jerk(actions: list[np.ndarray]) -> float:
    """Mean squared third difference of the executed actions, per step.

      jerk = sum_e sum_t ||a_{t+3} - 3 a_{t+2} + 3 a_{t+1} - a_t||^2 / sum_e (L_e - 3)

    pooled over all steps of all episodes (episodes shorter than 4 steps contribute
    nothing). In action units per step^3, squared: chunk boundaries where a policy switches
    plans show up as spikes in the third difference.

    Args:
        actions: per episode [L_e, A] executed actions.
    """
    total, count = 0.0, 0
    for a in actions:
        if len(a) < 4:
            continue
        d3 = np.diff(np.asarray(a, np.float64), n=3, axis=0)
        total += float(np.sum(d3**2))
        count += len(d3)
    return total / count if count else 0.0


def summarize(rollout_result: dict[str, Any]) -> dict[str, float | int]:
    """Success, collision, mode split, length, smoothness and speed of a rollout.

    Returns:
        episodes: E.
        success_rate, collision_rate, timeout_rate: fractions of E.
        mode_left_fraction, mode_right_fraction: fractions of ALL E episodes whose
            trajectory passed the obstacle on the left / right (see obstacle.passing_side:
            the sign of the lateral offset from the start->goal line where the trajectory
            crosses the obstacle center's level). Counted regardless of the outcome, so an
            episode that clips the far half of the obstacle still has a side; one that
            collides or stalls before reaching that level has none, so left + right <= 1.
        mean_episode_length: mean control steps over all episodes.
        action_jerk: see `action_jerk`.
        policy_call_ms: mean wall time of a policy call, excluding the first call when
            there are several (it includes JIT compilation); policy_call_ms_first: that one.
        instruction_following_rate: only for instructed envs, the fraction of ALL episodes
            whose trajectory passed on the side the instruction named (an episode with no
            side, e.g. a collision before the obstacle's level, did not follow it).
        stage_<k>_rate: only for envs that report stages (`max_stage`), for k = 1 ..
            num_stages (else the highest stage reached), the fraction of ALL episodes that
            reached stage k or beyond: where the failures stop.
    """
    success = np.asarray(rollout_result["success"], bool)
    collision = np.asarray(rollout_result["collision"], bool)
    timeout = np.asarray(rollout_result["timeout"], bool)
    side = np.asarray(rollout_result["side"])
    length = np.asarray(rollout_result["length"])
    calls = np.asarray(rollout_result["policy_call_s"], np.float64) * 1e3
    steady = calls[1:] if len(calls) > 1 else calls
    summary = {
        "episodes": int(len(success)),
        "success_rate": float(success.mean()),
        "collision_rate": float(collision.mean()),
        "timeout_rate": float(timeout.mean()),
        "mode_left_fraction": float(np.mean(side == obstacle.LEFT)),
        "mode_right_fraction": float(np.mean(side == obstacle.RIGHT)),
        "mean_episode_length": float(length.mean()),
        "action_jerk": action_jerk(rollout_result["actions"]),
        "policy_call_ms": float(steady.mean()) if len(steady) else 0.0,
        "policy_call_ms_first": float(calls[0]) if len(calls) else 0.0,
    }
    if "instructed_side" in rollout_result:
        instructed = np.asarray(rollout_result["instructed_side"])
        summary["instruction_following_rate"] = float(np.mean(side == instructed))
    if "max_stage" in rollout_result:
        max_stage = np.asarray(rollout_result["max_stage"], np.int64)
        num_stages = int(rollout_result.get("num_stages", max_stage.max(initial=0)))
        for k in range(1, num_stages + 1):
            summary[f"stage_{k}_rate"] = float(np.mean(max_stage >= k))
    return summary
