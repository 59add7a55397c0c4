"""Scripted expert for the reach-around-obstacle task: bimodal demonstrations.

Each episode the expert flips a fair coin for the side (left or right of the direction of
travel) and follows a smooth path around the obstacle on that side. In the frame of the
start->goal line (axial coordinate a from the start, lateral l positive to the left), the
nominal path is

  l(a) = l_c * v(a) + side * R * w(a),   R = obstacle radius + agent radius + margin,

where l_c is the obstacle center's lateral offset, v a bump that brings the path onto the
line through the obstacle center within CONVERGE_LENGTH of the start, and w is a bump: 1 while the path is
beside the obstacle (|a - a_c| <= obstacle radius + agent radius), 0 on the straight approach
until a per-episode `swerve` distance (SWERVE_RANGE) before the obstacle, rising over it along
a half-cosine, and falling back to 0 at the goal along a half-cosine (so the path leaves and
rejoins the line tangentially). The late swerve is what makes the demos hard for a regressor:
left and right demos share the whole approach, and the mean of the two swerves is the straight
line into the obstacle, less than one executed chunk before contact.
Beside the obstacle the path keeps `margin` of clearance; elsewhere the axial distance alone
keeps it clear.

Variation, so that demos are not copies of two curves: a per-episode margin and base speed,
and temporally correlated noise (AR(1) low-pass Gaussian, correlation ~10 steps) on the
speed along the path and on the lateral offset (scaled by w, so start and goal stay exact;
clipped to half the minimum margin, so it can never close the clearance).

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
# Axial distance before the obstacle over which the expert swerves to its side. Before that
# it drives straight at the obstacle, so left and right demos share those states: the side
# is decided late, less than one executed chunk (Ta = 8 steps, ~0.2) before contact.
SWERVE_RANGE = (0.10, 0.14)
# Axial distance from the start over which the expert converges onto the line through the
# obstacle center: afterwards the approach states no longer encode the (jittered) start.
CONVERGE_LENGTH = 0.15
SPEED_RANGE = (0.0225, 0.0275)  # Base arclength per control step (~0.25 units/s).
SPEED_NOISE = 0.15  # Relative std of the temporal speed noise.
SPEED_CLIP = (0.5, 1.5)  # Relative speed bounds.
LATERAL_NOISE = 0.02  # Std of the lateral offset noise.
LATERAL_CLIP = 0.04  # = MARGIN_RANGE[0] / 2.
NOISE_CORRELATION = 0.9  # AR(1) coefficient per control step.
PATH_POINTS = 512  # Resolution of the dense nominal path.

# Stream id mixed into an episode's seed for the expert's own randomness, so the expert's
# choices are independent of (and do not shift) the env's layout draw from the same seed.
_EXPERT_STREAM = 7919

INSTRUCTIONS = {
    obstacle.LEFT: "go around the left of the obstacle",
    obstacle.RIGHT: "go around the right of the obstacle",
}


def _bump(
    axial: np.ndarray, rise: tuple[float, float], fall: tuple[float, float]
) -> np.ndarray:
    """w(a): 0 before rise[0], up to 1 at rise[1] and down to 0 from fall[0] to fall[1], each
    ramp a half-cosine (so the path leaves and rejoins a line tangentially)."""
    up = np.clip((axial - rise[0]) / max(rise[1] - rise[0], 1e-9), 0.0, 1.0)
    down = np.clip((fall[1] - axial) / max(fall[1] - fall[0], 1e-9), 0.0, 1.0)
    return 0.25 * (1.0 - np.cos(np.pi * up)) * (1.0 - np.cos(np.pi * down))


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
    swerve = rng.uniform(*SWERVE_RANGE)
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
    lo, hi = axial_c - half_width, axial_c + half_width
    swerve_rise = (max(lo - swerve, 0.0), lo)
    goal_fall = (hi, length)

    def nominal_lateral(axial):
        # Converge onto the line through the obstacle center early, drive straight at it,
        # swerve late to this episode's side, rejoin the goal.
        on_center = lateral_c * _bump(axial, (0.0, CONVERGE_LENGTH), goal_fall)
        around = side * (half_width + margin) * _bump(axial, swerve_rise, goal_fall)
        return on_center + around

    # Dense nominal path and its arclength, to advance along it at a controlled speed.
    axial = np.linspace(0.0, length, PATH_POINTS)
    lateral = nominal_lateral(axial)
    points = start + axial[:, None] * direction + lateral[:, None] * normal
    arclength = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=-1))])

    step = speed * np.clip(1.0 + SPEED_NOISE * speed_noise, *SPEED_CLIP)
    s = np.minimum(np.cumsum(step), arclength[-1])
    a = np.interp(s, arclength, axial)
    w = _bump(a, swerve_rise, goal_fall)
    lat = np.interp(s, arclength, lateral)
    lat = lat + np.clip(LATERAL_NOISE * lateral_noise, -LATERAL_CLIP, LATERAL_CLIP) * w
    targets = start + a[:, None] * direction + lat[:, None] * normal
    return targets.astype(np.float32), side


def expert_rng(seed: int) -> np.random.Generator:
    """The expert's generator for the episode with layout seed `seed`."""
    return np.random.default_rng([int(seed), _EXPERT_STREAM])


def collect_demos(
    num_episodes: int, seed: int, max_episode_steps: int = obstacle.MAX_EPISODE_STEPS
) -> list[dict[str, Any]]:
    """Roll out the expert on `num_episodes` seeded episodes (all envs stepped together).

    Episode i uses layout seed `obstacle.episode_seeds(seed, num_episodes)[i]` and the expert
    randomness `expert_rng(that seed)`, so each demo is reproducible on its own.

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
    env = obstacle.ObstacleVecEnv(num_episodes, max_episode_steps=max_episode_steps)
    obs, _ = env.reset(seed=seeds)
    plans = [plan_episode(obs[i], expert_rng(s), max_episode_steps) for i, s in enumerate(seeds)]
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
        self, obs_history: np.ndarray, obs_pad_mask: np.ndarray, rng_step: int
    ) -> np.ndarray:
        """obs_history [N, T, S], obs_pad_mask [N, T] -> targets [N, horizon, 2]."""
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
            for state in current:
                rng = np.random.default_rng([self.seed, self._num_plans])
                self._num_plans += 1
                plans.append(plan_episode(state, rng, num_steps)[0])
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
