"""Receding-horizon rollouts, metrics and plots on the obstacle task."""

import json
import subprocess
import sys

import numpy as np
import pytest

from action_gen.envs import expert, obstacle
from action_gen.eval import metrics, plots, rollout

HORIZON, EXEC = 16, 8


def straight_line_policy(obs_history, obs_pad_mask, rng_step):
    del obs_pad_mask, rng_step
    return expert.straight_line_chunk(obs_history, HORIZON, np.mean(expert.SPEED_RANGE))


@pytest.fixture(scope="module")
def expert_result():
    # 40 episodes on 16 envs: the last round is padded and its extras discarded.
    policy = expert.ExpertChunkPolicy(HORIZON, EXEC, seed=0)
    env = obstacle.ObstacleVecEnv(16)
    return rollout.run_rollouts(env, policy, num_episodes=40, seed=7, action_exec_horizon=EXEC)


def test_expert_policy_metrics(expert_result):
    assert len(expert_result["positions"]) == 40
    s = metrics.summarize(expert_result)
    assert s["episodes"] == 40
    assert s["success_rate"] == 1.0 and s["collision_rate"] == 0.0 and s["timeout_rate"] == 0.0
    assert 0.35 <= s["mode_left_fraction"] <= 0.65
    assert s["mode_left_fraction"] + s["mode_right_fraction"] == pytest.approx(1.0)
    assert 40 < s["mean_episode_length"] < obstacle.MAX_EPISODE_STEPS
    assert 0.0 < s["action_jerk"] < 1e-2
    # Plain Python numbers, JSON ready.
    json.dumps(s)
    assert all(type(v) in (int, float) for v in s.values())


def test_rollout_record_is_consistent(expert_result):
    r = expert_result
    for i in range(40):
        length = r["length"][i]
        assert r["states"][i].shape == (length + 1, obstacle.STATE_DIM)
        assert r["actions"][i].shape == (length, 2)
        np.testing.assert_allclose(r["positions"][i][0], r["start"][i], atol=1e-6)
    # Goal reached at the end of each episode.
    final = np.stack([p[-1] for p in r["positions"]])
    assert np.linalg.norm(final - r["goal"], axis=-1).max() < obstacle.GOAL_TOLERANCE
    np.testing.assert_array_equal(r["seeds"], obstacle.episode_seeds(7, 40))


def test_straight_line_policy_collides_and_has_no_side():
    env = obstacle.ObstacleVecEnv(20)
    r = rollout.run_rollouts(env, straight_line_policy, num_episodes=20, seed=3)
    s = metrics.summarize(r)
    assert s["collision_rate"] >= 0.9 and s["success_rate"] == 0.0
    # Collides on the near half of the obstacle: it never passed on either side.
    assert s["mode_left_fraction"] == 0.0 and s["mode_right_fraction"] == 0.0


def test_history_padding_and_call_schedule():
    calls = []
    # The expert runs long enough for several calls (a straight line collides at once).
    inner = expert.ExpertChunkPolicy(HORIZON, 4, seed=0)

    def policy(obs_history, obs_pad_mask, rng_step):
        calls.append((obs_history, obs_pad_mask, rng_step))
        return inner(obs_history, obs_pad_mask, rng_step)

    env = obstacle.ObstacleVecEnv(3)
    r = rollout.run_rollouts(
        env, policy, num_episodes=3, seed=0, obs_horizon=3, action_exec_horizon=4
    )
    hist0, mask0, step0 = calls[0]
    assert hist0.shape == (3, 3, obstacle.STATE_DIM) and hist0.dtype == np.float32
    assert mask0.tolist() == [[False, False, True]] * 3 and step0 == 0
    np.testing.assert_array_equal(hist0[:, 0], hist0[:, 2])  # Padded by repeating obs 0.
    hist1, mask1, step1 = calls[1]
    assert mask1.all() and step1 == 1
    # Oldest first: after 4 steps the window holds observations 2, 3, 4.
    for i in range(3):
        np.testing.assert_array_equal(hist1[i], r["states"][i][2:5])
    assert len(calls) == -(-r["length"].max() // 4)


def test_max_steps_caps_episodes_as_timeouts():
    env = obstacle.ObstacleVecEnv(4)
    policy = expert.ExpertChunkPolicy(HORIZON, EXEC, seed=0)
    r = rollout.run_rollouts(env, policy, num_episodes=4, seed=0, max_steps=10)
    assert r["length"].tolist() == [10] * 4 and r["timeout"].all()
    assert metrics.summarize(r)["timeout_rate"] == 1.0


def test_short_chunk_is_rejected():
    env = obstacle.ObstacleVecEnv(2)
    with pytest.raises(ValueError, match="action_exec_horizon"):
        rollout.run_rollouts(
            env, lambda h, m, s: np.zeros((2, 4, 2)), num_episodes=2, seed=0, action_exec_horizon=8
        )


def test_action_jerk_matches_hand_computation():
    t = np.arange(10.0)
    assert metrics.action_jerk([np.stack([t, 2 * t], axis=-1)]) == 0.0  # Linear: no jerk.
    # Cubic: third difference is 6 in each of 2 dims -> 72 per step; short episodes skipped.
    cubic = np.stack([t**3, -(t**3)], axis=-1)
    assert metrics.action_jerk([cubic, np.zeros((3, 2))]) == pytest.approx(72.0)


def test_plots_are_written(expert_result, tmp_path):
    env = obstacle.ObstacleVecEnv(10)
    line = rollout.run_rollouts(env, straight_line_policy, num_episodes=10, seed=0)
    single, both = tmp_path / "expert.png", tmp_path / "comparison.png"
    plots.plot_rollouts(expert_result, str(single), "expert")
    plots.plot_comparison({"expert": expert_result, "straight line": line}, str(both))
    for path in (single, both):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_envs_and_eval_do_not_import_tensorflow_or_train():
    code = (
        "import sys; import action_gen.envs.obstacle, action_gen.envs.expert; "
        "import action_gen.eval.rollout, action_gen.eval.metrics, action_gen.eval.plots; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'tensorflow' "
        "or m.startswith('action_gen.train')]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_instructed_env_passes_prompts_and_scores_following():
    env = obstacle.ObstacleVecEnv(8, instructed=True)
    follower = expert.ExpertChunkPolicy(HORIZON, EXEC, seed=0)
    result = rollout.run_rollouts(env, follower, num_episodes=16, seed=3, action_exec_horizon=EXEC)
    summary = metrics.summarize(result)
    assert summary["success_rate"] == 1.0
    assert summary["instruction_following_rate"] == 1.0
    assert 0.0 < summary["mode_left_fraction"] < 1.0

    def contrarian(obs_history, obs_pad_mask, rng_step, prompt):
        flipped = np.array(
            [t.replace("left", "RIGHT").replace("right", "left").lower() for t in prompt]
        )
        return follower(obs_history, obs_pad_mask, rng_step, prompt=flipped)

    result = rollout.run_rollouts(
        env, contrarian, num_episodes=16, seed=3, action_exec_horizon=EXEC
    )
    assert metrics.summarize(result)["instruction_following_rate"] == 0.0


def test_language_demos_take_the_instructed_side():
    demos = expert.collect_demos(12, seed=5, instructed=True)
    env = obstacle.ObstacleVecEnv(12, instructed=True)
    _, info = env.reset(seed=obstacle.episode_seeds(5, 12))
    for demo, side in zip(demos, info["instructed_side"], strict=True):
        assert demo["language_instruction"] == obstacle.INSTRUCTIONS[side]
        assert demo["episode_metadata"]["side"] == obstacle.SIDE_NAMES[side]


def test_temporal_ensemble_averages_every_covering_chunk_with_acts_weights():
    # Call n returns a chunk whose action i is the start position + (n, i) scaled small
    # (actions are target positions): each executed command then says which chunks it
    # averaged and at which offsets.
    horizon, decay, scale = 4, 0.5, 1e-3
    start = {}

    def policy(obs_history, obs_pad_mask, rng_step):
        start.setdefault("pos", obs_history[:, -1, obstacle.POS])
        n_i = np.stack(np.meshgrid(rng_step, np.arange(horizon), indexing="ij"), -1)[0]
        return (start["pos"][:, None] + scale * n_i[None]).astype(np.float32)

    env = obstacle.ObstacleVecEnv(2)
    r = rollout.run_rollouts(
        env, policy, num_episodes=2, seed=0, action_exec_horizon=1, max_steps=7,
        temporal_ensemble_decay=decay,
    )  # fmt: skip
    assert r["temporal_ensemble_decay"] == decay
    for t in range(7):
        calls = np.arange(max(0, t - horizon + 1), t + 1)  # oldest first; call n starts at n
        w = np.exp(-decay * np.arange(len(calls)))
        w /= w.sum()
        want = r["positions"][0][0] + scale * np.array([w @ calls, w @ (t - calls)])
        np.testing.assert_allclose(r["actions"][0][t], want, rtol=1e-6, err_msg=f"t={t}")
    # Without ensembling the same policy executes each chunk's first action only.
    start.clear()
    plain = rollout.run_rollouts(
        env, policy, num_episodes=2, seed=0, action_exec_horizon=1, max_steps=7
    )
    offsets = plain["actions"][0] - plain["positions"][0][0]
    np.testing.assert_allclose(offsets[:, 1], 0.0, atol=1e-7)  # action 0 of each chunk
    np.testing.assert_allclose(offsets[:, 0], scale * np.arange(7), rtol=1e-5)
    assert "temporal_ensemble_decay" not in plain
    with pytest.raises(ValueError, match="temporal_ensemble_decay"):
        rollout.run_rollouts(env, policy, num_episodes=2, seed=0, temporal_ensemble_decay=-1)
