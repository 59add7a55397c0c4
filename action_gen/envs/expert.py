"""Scripted expert for the reach-around-obstacle task: bimodal demonstrations.

Each episode the expert flips a fair coin for the side (left or right of the direction of
travel) and follows a smooth path around the obstacle on that side. In the frame of the
start->goal line (axial coordinate a from the start, lateral l positive to the left), the
nominal path is

  l(a) = (l_c + side * R) * u(a) * d(a),   R = obstacle radius + agent radius + margin,

where l_c is the obstacle center's lateral offset, u(a) = sin(pi/2 * min(a / a_c, 1))^p
(p = RISE_EXPONENT) rises from 0 at the start to 1 beside the obstacle center (axial a_c),
and d(a) is a half-cosine
from 1 at a_c to 0 at the goal (the path rejoins the line tangentially). The obstacle sits
right in front of the start (its edge 0.10 ahead), so the expert commits to a side at once,
leaving at ~60 degrees from the straight line.

Why this shape: every episode starts from (nearly) the same state at rest and the side is
a coin flip, so the very first action chunk is genuinely bimodal. The mean of a left and a
right chunk keeps only the forward component, which reaches the obstacle within one
executed chunk (Ta = 8 steps): plain regression drives into it, while a generative policy
samples one side and, once off the line, the next chunks are unimodal.

Variation, so that demos are not copies of two curves: a per-episode margin and base speed,
and temporally correlated noise (AR(1) low-pass Gaussian, correlation ~10 steps) on the
speed along the path and on the lateral offset (scaled by u * d, so start and goal stay
exact; clipped to half the minimum margin, so it can never close the clearance).

The expert is open loop: the dynamics are deterministic and the PD controller tracks smooth
targets closely, so the target sequence is planned once per episode from the first
observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from action_gen.envs import obstacle

# Expert design constants.
MARGIN_RANGE = (0.08, 0.14)  # Clearance beside the obstacle, per episode.
# u(a) = sin(pi/2 a / a_c) ** RISE_EXPONENT: below 1 the path leaves the line more steeply,
# buying clearance from the obstacle at the cost of forward progress in the first chunk.
RISE_EXPONENT = 0.7
SPEED_RANGE = (0.03, 0.036)  # Base arclength per control step (~0.25 units/s).
SPEED_NOISE = 0.15  # Relative std of the temporal speed noise.
SPEED_CLIP = (0.5, 1.5)  # Relative speed bounds.
LATERAL_NOISE = 0.02  # Std of the lateral offset noise.
LATERAL_CLIP = 0.02
NOISE_CORRELATION = 0.9  # AR(1) coefficient per control step.
PATH_POINTS = 512  # Resolution of the dense nominal path.

# Stream id mixed into an episode's seed for the expert's own randomness, so the expert's
# choices are independent of (and do not shift) the env's layout draw from the same seed.
_EXPERT_STREAM = 7919

INSTRUCTIONS = obstacle.INSTRUCTIONS


def _lateral_profile(axial: np.ndarray, axial_c: float, length: float) -> np.ndarray:
    """u(a) * d(a): rise from 0 at the start to 1 at a_c, half-cosine fall to 0 at the goal
    (`length`)."""
    rise = np.sin(0.5 * np.pi * np.clip(axial / axial_c, 0.0, 1.0)) ** RISE_EXPONENT
    fall = 0.5 * (1.0 + np.cos(np.pi * np.clip((axial - axial_c) / (length - axial_c), 0.0, 1.0)))
    return rise * fall


def _ar1_noise(rng: np.random.Generator, num_steps: int) -> np.ndarray:
    """[num_steps] stationary unit-variance AR(1) noise: low-pass filtered Gaussian."""
    alpha = NOISE_CORRELATION
    eps = rng.standard_normal(num_steps)
    x = np.empty(num_steps)
    x[0] = eps[0]
    scale = np.sqrt(1.0 - alpha**2)
    for t in range(1, num_steps):
        x[t] = alpha * x[t - 1] + scale * eps[t]
    return x


def plan_episode(
    state: np.ndarray, rng: np.random.Generator, num_steps: int, side: int | None = None
) -> tuple[np.ndarray, int]:
    """Plan the expert's target sequence for one episode from its first observation.

    Args:
        state: [S] the episode's first observation (agent at the start, at rest).
        rng: the expert's randomness for this episode (side, margin, speed, noise).
        num_steps: number of targets to plan; after reaching the goal the targets stay there.
        side: force obstacle.LEFT / obstacle.RIGHT; None flips a fair coin.

    Returns:
        (targets [num_steps, 2] float32, side).
    """
    start = state[obstacle.POS].astype(np.float64)
    goal = state[obstacle.GOAL_SLICE].astype(np.float64)
    center = state[obstacle.CENTER].astype(np.float64)
    radius = float(state[obstacle.RADIUS])
    coin = rng.integers(2)
    margin = rng.uniform(*MARGIN_RANGE)
    speed = rng.uniform(*SPEED_RANGE)
    speed_noise = _ar1_noise(rng, num_steps)
    lateral_noise = _ar1_noise(rng, num_steps)
    if side is None:
        side = obstacle.LEFT if coin else obstacle.RIGHT

    length = float(np.linalg.norm(goal - start))
    direction = (goal - start) / length
    normal = np.array([-direction[1], direction[0]])  # Unit vector to the left.
    axial_c, lateral_c = (v[0, 0] for v in obstacle.line_frame(start, goal, center[None, None]))
    half_width = radius + obstacle.AGENT_RADIUS
    peak = lateral_c + side * (half_width + margin)

    # Dense nominal path and its arclength, to advance along it at a controlled speed.
    axial = np.linspace(0.0, length, PATH_POINTS)
    lateral = peak * _lateral_profile(axial, axial_c, length)
    points = start + axial[:, None] * direction + lateral[:, None] * normal
    arclength = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=-1))])

    step = speed * np.clip(1.0 + SPEED_NOISE * speed_noise, *SPEED_CLIP)
    s = np.minimum(np.cumsum(step), arclength[-1])
    a = np.interp(s, arclength, axial)
    w = _lateral_profile(a, axial_c, length)
    lat = np.interp(s, arclength, lateral)
    lat = lat + np.clip(LATERAL_NOISE * lateral_noise, -LATERAL_CLIP, LATERAL_CLIP) * w
    targets = start + a[:, None] * direction + lat[:, None] * normal
    return targets.astype(np.float32), side


def expert_rng(seed: int) -> np.random.Generator:
    """The expert's generator for the episode with layout seed `seed`."""
    return np.random.default_rng([int(seed), _EXPERT_STREAM])


def collect_demos(
    num_episodes: int,
    seed: int,
    max_episode_steps: int = obstacle.MAX_EPISODE_STEPS,
    instructed: bool = False,
) -> list[dict[str, Any]]:
    """Roll out the expert on `num_episodes` seeded episodes (all envs stepped together).

    Episode i uses layout seed `obstacle.episode_seeds(seed, num_episodes)[i]` and the expert
    randomness `expert_rng(that seed)`, so each demo is reproducible on its own. With
    `instructed`, the side is the one the episode's instruction names
    (`obstacle.instructed_side`) instead of the expert's own coin flip; either way the
    demo's language_instruction names the side actually taken.

    Returns:
        One dict per episode, L = steps until success (inclusive):
          observation/state [L, 9] float32  the observation before each action
          action            [L, 2] float32  target positions
          reward            [L] float32     1.0 on the success step, else 0
          language_instruction  str         the side taken, in words
          episode_metadata  {"seed": int, "side": "left" | "right"}

    Raises:
        RuntimeError: if the expert fails an episode (a bug: it is built never to).
    """
    seeds = obstacle.episode_seeds(seed, num_episodes)
    env = obstacle.ObstacleVecEnv(
        num_episodes, max_episode_steps=max_episode_steps, instructed=instructed
    )
    obs, reset_info = env.reset(seed=seeds)
    sides = reset_info["instructed_side"] if instructed else [None] * num_episodes
    plans = [
        plan_episode(obs[i], expert_rng(s), max_episode_steps, side=sides[i])
        for i, s in enumerate(seeds)
    ]
    targets = np.stack([p[0] for p in plans], axis=1)  # [M, N, 2]
    states, rewards = [obs], []
    for t in range(max_episode_steps):
        obs, reward, _, _, info = env.step(targets[t])
        rewards.append(reward)
        if info["done"].all():
            break
        states.append(obs)
    if not info["success"].all():
        failed = seeds[~info["success"]].tolist()
        raise RuntimeError(f"expert failed on episode seeds {failed}")
    states = np.stack(states, axis=1)  # [N, steps, S]
    rewards = np.stack(rewards, axis=1)  # [N, steps]
    episodes = []
    for i, (s, (_, side)) in enumerate(zip(seeds, plans, strict=True)):
        length = int(info["elapsed_steps"][i])
        episodes.append(
            {
                "observation": {"state": states[i, :length].copy()},
                "action": targets[:length, i].copy(),
                "reward": rewards[i, :length].copy(),
                "language_instruction": INSTRUCTIONS[side],
                "episode_metadata": {"seed": int(s), "side": obstacle.SIDE_NAMES[side]},
            }
        )
    return episodes


class ExpertChunkPolicy:
    """The expert as a chunked `policy_fn` for eval/rollout.py (a reference upper bound).

    Stateful: it plans a target sequence when it sees a new episode (a padded first history
    step, or a different goal/obstacle) and returns the next `horizon` targets, advancing by
    `action_exec_horizon` per call, which is what the receding-horizon loop executes.
    """

    def __init__(self, horizon: int, action_exec_horizon: int, seed: int = 0):
        self.horizon = horizon
        self.action_exec_horizon = action_exec_horizon
        self.seed = seed
        self._num_plans = 0
        self._targets = None
        self._layout = None

    def __call__(
        self,
        obs_history: np.ndarray,
        obs_pad_mask: np.ndarray,
        rng_step: int,
        prompt: np.ndarray | None = None,
    ) -> np.ndarray:
        """obs_history [N, T, S], obs_pad_mask [N, T] -> targets [N, horizon, 2]; with
        `prompt` [N] instructions naming a side, that side is taken."""
        del rng_step
        current = obs_history[:, -1]
        layout = current[:, obstacle.GOAL_SLICE.start :]
        new_episode = (
            self._targets is None
            or not obs_pad_mask[:, 0].all()
            or self._layout.shape != layout.shape
            or not np.array_equal(self._layout, layout)
        )
        if new_episode:
            num_steps = obstacle.MAX_EPISODE_STEPS * 2 + self.horizon
            plans = []
            for i, state in enumerate(current):
                rng = np.random.default_rng([self.seed, self._num_plans])
                self._num_plans += 1
                side = None if prompt is None else obstacle.side_of_instruction(prompt[i])
                side = side or None  # NO_SIDE: the instruction names none, flip the coin
                plans.append(plan_episode(state, rng, num_steps, side=side)[0])
            self._targets = np.stack(plans)
            self._layout = layout.copy()
            self._t = 0
        t = min(self._t, self._targets.shape[1] - self.horizon)
        chunk = self._targets[:, t : t + self.horizon]
        self._t += self.action_exec_horizon
        return chunk


def straight_line_chunk(obs_history: np.ndarray, horizon: int, speed: float) -> np.ndarray:
    """The average of the two expert modes: march straight at the goal.

    Args:
        obs_history: [N, T, S] observation history (the last step is used).
        horizon: H, the chunk length.
        speed: distance per control step.

    Returns:
        [N, H, 2] targets along the line from the current position to the goal, stopping
        at the goal.
    """
    current = obs_history[:, -1]
    pos, goal = current[:, obstacle.POS], current[:, obstacle.GOAL_SLICE]
    offset = goal - pos
    dist = np.linalg.norm(offset, axis=-1, keepdims=True)
    unit = offset / np.maximum(dist, 1e-9)
    travel = np.minimum(speed * np.arange(1, horizon + 1)[None, :], dist)  # [N, H]
    return (pos[:, None] + travel[..., None] * unit[:, None]).astype(np.float32)
