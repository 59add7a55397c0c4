"""Scripted expert: always succeeds, never collides, and is genuinely bimodal."""

import numpy as np
import pytest

from action_gen.envs import expert, obstacle

NUM_DEMOS = 60


@pytest.fixture(scope="module")
def demos():
    return expert.collect_demos(NUM_DEMOS, seed=0)


def test_demo_format(demos):
    assert len(demos) == NUM_DEMOS
    for ep in demos:
        states, actions, reward = ep["observation"]["state"], ep["action"], ep["reward"]
        length = len(actions)
        assert states.shape == (length, obstacle.STATE_DIM) and states.dtype == np.float32
        assert actions.shape == (length, 2) and actions.dtype == np.float32
        assert reward.shape == (length,) and reward.dtype == np.float32
        side = ep["episode_metadata"]["side"]
        assert side in ("left", "right") and side in ep["language_instruction"]
        assert isinstance(ep["episode_metadata"]["seed"], int)


def test_expert_always_succeeds_without_collision(demos):
    lengths = []
    for ep in demos:
        # The success step is the last one and carries the only reward.
        assert ep["reward"][-1] == 1.0 and ep["reward"][:-1].sum() == 0.0
        states = ep["observation"]["state"]
        dist = np.linalg.norm(states[:, obstacle.POS] - states[:, obstacle.CENTER], axis=-1)
        clearance = dist - states[:, obstacle.RADIUS] - obstacle.AGENT_RADIUS
        assert clearance.min() > 0.02
        lengths.append(len(ep["action"]))
    # Finishes comfortably inside the step limit, at about 2/3 of it on average.
    assert max(lengths) < obstacle.MAX_EPISODE_STEPS - 10
    assert 0.5 < np.mean(lengths) / obstacle.MAX_EPISODE_STEPS < 0.7


def test_both_sides_are_demonstrated(demos):
    left = np.mean([ep["episode_metadata"]["side"] == "left" for ep in demos])
    assert 0.35 <= left <= 0.65


def test_demos_are_bimodal_at_the_obstacle(demos):
    """Lateral position where a demo crosses the obstacle's level: two separated clusters."""
    offsets, sides = [], []
    for ep in demos:
        states = ep["observation"]["state"]
        start, goal = states[0, obstacle.POS], states[0, obstacle.GOAL_SLICE]
        center, radius = states[0, obstacle.CENTER], states[0, obstacle.RADIUS]
        axial, lateral = obstacle.line_frame(start, goal, states[:, obstacle.POS])
        (axial_c,), (lateral_c,) = obstacle.line_frame(start, goal, center[None])
        i = np.argmax(axial >= axial_c)
        offsets.append((lateral[i] - lateral_c) / (radius + obstacle.AGENT_RADIUS))
        sides.append(ep["episode_metadata"]["side"])
        # The geometric side agrees with the side the expert chose.
        side = obstacle.passing_side(states[:, obstacle.POS], start, goal, center)
        assert obstacle.SIDE_NAMES[side] == sides[-1]
    offsets, sides = np.array(offsets), np.array(sides)
    # In units of the collision radius: every demo is outside the disc, none near the middle.
    assert offsets[sides == "left"].min() > 1.0
    assert offsets[sides == "right"].max() < -1.0
    # The gap between the clusters dwarfs the spread within each.
    gap = offsets[sides == "left"].min() - offsets[sides == "right"].max()
    spread = max(offsets[sides == "left"].std(), offsets[sides == "right"].std())
    assert gap > 10 * spread


def test_demos_are_reproducible():
    a = expert.collect_demos(3, seed=5)
    b = expert.collect_demos(3, seed=5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["action"], y["action"])
        np.testing.assert_array_equal(x["observation"]["state"], y["observation"]["state"])
    # An episode is replayable alone from its metadata seed.
    seed = a[1]["episode_metadata"]["seed"]
    obs, _ = obstacle.ObstacleVecEnv(1).reset(seed=[seed])
    targets, _ = expert.plan_episode(obs[0], expert.expert_rng(seed), obstacle.MAX_EPISODE_STEPS)
    np.testing.assert_array_equal(targets[: len(a[1]["action"])], a[1]["action"])


def test_straight_line_policy_collides():
    """The mean of the two modes - straight at the goal - hits the obstacle.

    This is what makes the task a test of multimodality: a policy that regresses the mean
    action behaves like this one.
    """
    env = obstacle.ObstacleVecEnv(100)
    obs, _ = env.reset(seed=1)
    for _ in range(obstacle.MAX_EPISODE_STEPS):
        speed = np.mean(expert.SPEED_RANGE)
        obs, _, _, _, info = env.step(expert.straight_line_chunk(obs[:, None], 1, speed)[:, 0])
        if info["done"].all():
            break
    assert info["collision"].mean() >= 0.9
