"""Reach-around-obstacle env: spaces, seeding, physics outcomes, freezing when done."""

import gymnasium
import numpy as np
import pytest

from action_gen.envs import obstacle


def test_reset_and_step_shapes_and_dtypes():
    env = obstacle.ObstacleVecEnv(4)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, obstacle.STATE_DIM) and obs.dtype == np.float32
    assert env.observation_space.shape == (4, 9) and env.action_space.shape == (4, 2)
    np.testing.assert_allclose(obs[:, obstacle.POS], info["start"], atol=1e-6)
    np.testing.assert_array_equal(obs[:, obstacle.VEL], 0.0)
    obs, reward, terminated, truncated, info = env.step(obs[:, obstacle.POS])
    assert obs.shape == (4, 9) and obs.dtype == np.float32
    assert reward.shape == (4,) and reward.dtype == np.float32
    assert terminated.dtype == bool and truncated.dtype == bool
    for key in ("success", "collision", "timeout", "done", "episode_end", "elapsed_steps"):
        assert info[key].shape == (4,)
    np.testing.assert_array_equal(info["elapsed_steps"], 1)


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError):
        obstacle.ObstacleVecEnv(2).step(np.zeros((2, 2)))


def test_seeded_reset_is_reproducible_per_episode():
    env = obstacle.ObstacleVecEnv(5)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Episode i of a batch is replayable alone from its own seed.
    seeds = obstacle.episode_seeds(3, 5)
    single = obstacle.ObstacleVecEnv(1)
    for i, s in enumerate(seeds):
        obs, _ = single.reset(seed=[s])
        np.testing.assert_array_equal(obs[0], a[i])
    # Prefix stable: the first seeds do not depend on how many are drawn.
    np.testing.assert_array_equal(obstacle.episode_seeds(3, 2), seeds[:2])


def test_obstacle_always_blocks_the_straight_line():
    env = obstacle.ObstacleVecEnv(500)
    _, info = env.reset(seed=0)
    _, lateral = obstacle.line_frame(info["start"], info["goal"], info["obstacle_center"][:, None])
    blocked_by = info["obstacle_radius"] + obstacle.AGENT_RADIUS - np.abs(lateral[:, 0])
    assert blocked_by.min() > 0.1


def test_straight_target_through_obstacle_collides_then_freezes():
    env = obstacle.ObstacleVecEnv(2, max_episode_steps=15)
    obs, info = env.reset(seed=1)
    # Env 0 heads straight for the goal (through the obstacle); env 1 holds still.
    targets = np.stack([info["goal"][0], info["start"][1]])
    ends = []
    for _ in range(15):
        obs, reward, terminated, truncated, info = env.step(targets)
        ends.append(info["episode_end"].copy())
    assert info["collision"][0] and terminated[0] and not truncated[0]
    assert not info["success"][0] and reward[0] == 0.0
    dist = np.linalg.norm(obs[0, obstacle.POS] - obs[0, obstacle.CENTER])
    touch = obs[0, obstacle.RADIUS] + obstacle.AGENT_RADIUS
    assert touch - 0.02 < dist < touch  # Stopped at the surface, not tunnelled through.
    assert truncated[1] and info["timeout"][1] and not terminated[1]
    assert np.sum(ends, axis=0).tolist() == [1, 1]  # Each episode ends exactly once.

    # Frozen: same observation, flags and step count whatever the action.
    frozen = obs.copy()
    for _ in range(3):
        obs, reward, terminated, truncated, info2 = env.step(np.full((2, 2), 0.9))
        np.testing.assert_array_equal(obs, frozen)
        np.testing.assert_array_equal(reward, 0.0)
        assert terminated.tolist() == [True, False] and truncated.tolist() == [False, True]
        np.testing.assert_array_equal(info2["elapsed_steps"], info["elapsed_steps"])
        assert not info2["episode_end"].any()


def test_pd_controller_reaches_a_static_target():
    env = obstacle.ObstacleVecEnv(1)
    obs, info = env.reset(seed=2)
    target = info["start"] + np.array([[0.3, 0.0]])
    for _ in range(10):
        obs, *_ = env.step(target)
    np.testing.assert_allclose(obs[0, obstacle.POS], target[0], atol=1e-3)
    assert np.abs(obs[0, obstacle.VEL]).max() < 1e-2


def test_registered_single_env():
    env = gymnasium.make(obstacle.ENV_ID)
    seed = int(obstacle.episode_seeds(0, 1)[0])
    obs, info = env.reset(seed=seed)
    vec_obs, _ = obstacle.ObstacleVecEnv(1).reset(seed=0)
    np.testing.assert_array_equal(obs, vec_obs[0])
    obs, reward, terminated, truncated, info = env.step(obs[obstacle.POS])
    assert obs.shape == (9,) and isinstance(reward, float) and isinstance(terminated, bool)
    assert info["elapsed_steps"] == 1


def test_language_variant_instructions_are_seeded_and_balanced():
    from action_gen import envs

    env = envs.make_vector_env("obstacle_language", num_envs=200)
    _, info = env.reset(seed=11)
    sides, texts = info["instructed_side"], info["instruction"]
    assert set(np.unique(sides)) == {obstacle.LEFT, obstacle.RIGHT}
    assert 0.35 < np.mean(sides == obstacle.LEFT) < 0.65
    for side, text in zip(sides, texts, strict=True):
        assert text == obstacle.INSTRUCTIONS[side]
        assert obstacle.side_of_instruction(text) == side
    # Episode i's instruction depends on its own seed only.
    single = obstacle.ObstacleVecEnv(1, instructed=True)
    _, one = single.reset(seed=[int(info["seed"][5])])
    assert one["instruction"][0] == texts[5]
    assert obstacle.side_of_instruction(b"pass on the LEFT.") == obstacle.LEFT
    assert obstacle.side_of_instruction("left or right") == obstacle.NO_SIDE
