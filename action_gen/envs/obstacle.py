"""Reach-around-obstacle: a 2-D point mass must get from the bottom to the top of the
workspace around a disc that sits squarely on the straight line between them.

The task exists to show multimodality. Going left and going right around the disc are
equally good, so a demonstration set holds both at the same state; a policy that regresses
the mean action averages them into the straight line and hits the disc, while a generative
policy samples one side and keeps to it.

Layout (workspace [-1, 1]^2, y up). Every episode draws, from its own seed:

  start            (0, -0.6) + U[-0.03, 0.03]^2
  goal             (0, +0.75)
  obstacle center  (0, -0.22)   (collision edge 0.10 ahead of the start)
  obstacle radius  0.25

(jitter and radius range are the module constants POSITION_JITTER, OBSTACLE_RADIUS_RANGE).
The center is at most ~0.03 from the start->goal line while the collision radius
(obstacle + agent) is 0.28, so the straight path always collides.

Dynamics. The action is the next target position (position control, as in Push-T). A
critically damped PD controller pulls the point mass towards it:

  acc = KP (target - pos) - KD vel,   KP = 400, KD = 40 (natural frequency 20 rad/s)

integrated with semi-implicit Euler at PHYSICS_DT = 0.01 s for SUBSTEPS = 10 substeps per
control step (10 Hz control). The speed is clipped to MAX_SPEED and the target and the
position to the workspace. Following a target that moves at speed v the agent trails it by
KD / KP * v, i.e. one control step's worth of motion.

Termination. Collision (agent centre within obstacle radius + AGENT_RADIUS, checked every
substep so that fast motion cannot tunnel) ends the episode as a failure; reaching within
GOAL_TOLERANCE of the goal ends it as a success (reward 1.0 on that step, 0 otherwise);
MAX_EPISODE_STEPS control steps end it as a timeout (truncation). The scripted expert
(envs/expert.py) finishes in about 2/3 of the step limit.

No auto-reset. A finished env freezes: it keeps returning its final observation, reward 0
and its final terminated / truncated flags, so a rollout can step all envs until every one
is done and read each outcome afterwards.

Observation, float32 [S = 9]: agent position (2), agent velocity (2), goal (2), obstacle
center (2), obstacle radius (1). Action, float32 [2]: target position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np

# Workspace and layout.
WORKSPACE_HALF_WIDTH = 1.0
START = (0.0, -0.6)
GOAL = (0.0, 0.75)
OBSTACLE_CENTER = (0.0, -0.22)  # Collision edge 0.10 ahead of the start.
# Uniform +- jitter per axis of start, goal and obstacle center. Only the start moves: the
# goal and obstacle are part of the observation for the whole episode, and a per-episode
# layout would be a key from which a regressor can memorize each demo's (random) side, which
# is not the ambiguity this task is about (see envs/expert.py).
POSITION_JITTER = (0.03, 0.0, 0.0)
OBSTACLE_RADIUS_RANGE = (0.25, 0.25)
AGENT_RADIUS = 0.03
GOAL_TOLERANCE = 0.05

# Dynamics.
KP = 400.0
KD = 40.0  # 2 sqrt(KP): critically damped, no overshoot around the target.
PHYSICS_DT = 0.01
SUBSTEPS = 10
CONTROL_DT = PHYSICS_DT * SUBSTEPS
MAX_SPEED = 0.6  # ~1.2x the expert's top speed: no superhuman last-moment dodges.
MAX_EPISODE_STEPS = 80

# Observation layout.
STATE_DIM = 9
ACTION_DIM = 2
POS = slice(0, 2)
VEL = slice(2, 4)
GOAL_SLICE = slice(4, 6)
CENTER = slice(6, 8)
RADIUS = 8

LEFT, RIGHT, NO_SIDE = 1, -1, 0
SIDE_NAMES = {LEFT: "left", RIGHT: "right", NO_SIDE: "none"}
# The language-conditioned variant names the side to take; the demos carry the same text.
INSTRUCTIONS = {
    LEFT: "go around the left of the obstacle",
    RIGHT: "go around the right of the obstacle",
}
# Stream id mixed into an episode's seed for the instructed side (independent of the layout).
_INSTRUCTION_STREAM = 104_729


def instructed_side(seed: int) -> int:
    """The side (LEFT / RIGHT, a fair coin) the instruction of episode `seed` names."""
    return LEFT if np.random.default_rng([int(seed), _INSTRUCTION_STREAM]).integers(2) else RIGHT


def side_of_instruction(text: str | bytes) -> int:
    """LEFT / RIGHT for an instruction naming a side (NO_SIDE if it names neither)."""
    text = text.decode() if isinstance(text, bytes) else str(text)
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    if ("left" in words) == ("right" in words):
        return NO_SIDE
    return LEFT if "left" in words else RIGHT


ENV_ID = "action_gen/ObstacleAvoid-v0"


def episode_seeds(seed: int, num_episodes: int) -> np.ndarray:
    """Per-episode seeds derived from one base seed.

    A prefix-stable hash (`SeedSequence.generate_state`): the first k seeds do not depend on
    `num_episodes`, so episode i of a 50-episode evaluation is episode i of a 500-episode one,
    and any episode can be replayed alone with `reset(seed=[seeds[i]])`.

    Returns:
        [num_episodes] int64 seeds in [0, 2^32).
    """
    return np.random.SeedSequence(seed).generate_state(num_episodes).astype(np.int64)


def sample_layout(seed: int) -> dict[str, np.ndarray]:
    """The randomized start, goal and obstacle of one episode (a pure function of `seed`)."""
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-1.0, 1.0, size=(3, 2)) * np.asarray(POSITION_JITTER)[:, None]
    return {
        "start": np.asarray(START) + jitter[0],
        "goal": np.asarray(GOAL) + jitter[1],
        "obstacle_center": np.asarray(OBSTACLE_CENTER) + jitter[2],
        "obstacle_radius": np.asarray(rng.uniform(*OBSTACLE_RADIUS_RANGE)),
    }


def line_frame(
    start: np.ndarray, goal: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of `points` along and across the start->goal line.

    Args:
        start: [..., 2] line origin.
        goal: [..., 2] line end.
        points: [..., P, 2] points (broadcast against start/goal with a P axis).

    Returns:
        (axial, lateral), each [..., P]: distance along the line from `start`, and signed
        distance from the line, positive on the LEFT of the direction of travel.
    """
    d = goal - start
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    rel = points - start[..., None, :]
    axial = rel[..., 0] * d[..., None, 0] + rel[..., 1] * d[..., None, 1]
    # 2-D cross product d x rel: positive when rel is counter-clockwise from d, i.e. left.
    lateral = d[..., None, 0] * rel[..., 1] - d[..., None, 1] * rel[..., 0]
    return axial, lateral


def passing_side(
    positions: np.ndarray, start: np.ndarray, goal: np.ndarray, center: np.ndarray
) -> int:
    """Which side of the obstacle a trajectory passed on, decided geometrically.

    The trajectory passes the obstacle where it first crosses the line through the obstacle
    center perpendicular to start->goal. The side is the sign of its (interpolated) lateral
    offset from the start->goal line at that crossing: LEFT (+1) or RIGHT (-1) of the
    direction of travel. A trajectory that never gets that far (it collided on the near
    half of the obstacle, or timed out short of it) passed on no side: NO_SIDE (0).

    Args:
        positions: [L, 2] agent positions, start first.
        start, goal, center: [2] the episode's layout.
    """
    axial, lateral = line_frame(start, goal, positions)
    axial_c, _ = line_frame(start, goal, center[None])
    beyond = np.nonzero(axial >= axial_c[0])[0]
    if beyond.size == 0:
        return NO_SIDE
    i = beyond[0]
    if i == 0:
        lat = lateral[0]
    else:
        frac = (axial_c[0] - axial[i - 1]) / (axial[i] - axial[i - 1])
        lat = lateral[i - 1] + frac * (lateral[i] - lateral[i - 1])
    if lat == 0:
        return NO_SIDE
    return LEFT if lat > 0 else RIGHT


class ObstacleVecEnv(gymnasium.vector.VectorEnv):
    """N independent reach-around-obstacle episodes, stepped together in numpy.

    All envs are reset together; each then runs until it succeeds, collides or times out
    and freezes (see the module docstring). `info` arrays, all [N]:

      success, collision, timeout  bool  outcome so far (sticky once the episode ended)
      done                         bool  episode over (any of the three)
      episode_end                  bool  the episode ended on this very step
      elapsed_steps                int   control steps taken (frozen once done)
      seed                         int   the episode's layout seed
    and at reset additionally start, goal, obstacle_center [N, 2], obstacle_radius [N].

    With `instructed=True` (the language-conditioned variant, env name "obstacle_language")
    every episode also gets an instruction naming a side, drawn from its seed
    (`instructed_side`): reset's info adds `instruction` [N] str and `instructed_side` [N]
    int. Success stays geometric (goal without collision); following the instruction is
    scored by the evaluation (`instruction_following_rate`).
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": None}

    def __init__(
        self, num_envs: int, max_episode_steps: int = MAX_EPISODE_STEPS, instructed: bool = False
    ):
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.instructed = instructed
        w = WORKSPACE_HALF_WIDTH
        self.single_observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32
        )
        self.single_action_space = gymnasium.spaces.Box(
            -w, w, shape=(ACTION_DIM,), dtype=np.float32
        )
        self.observation_space = gymnasium.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self._reset_called = False

    def reset(
        self,
        *,
        seed: int | Sequence[int] | np.ndarray | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Start a new episode in every env.

        Args:
            seed: one seed per env (a sequence of N ints), or a base seed expanded with
                `episode_seeds`, or None for fresh entropy. Episode i depends only on its own
                seed, so `reset(seed=[s])` on a 1-env instance replays it.
            options: unused.

        Returns:
            (obs [N, S] float32, info).
        """
        del options
        if seed is None:
            seeds = episode_seeds(int(np.random.SeedSequence().entropy % 2**32), self.num_envs)
        elif np.ndim(seed) == 0:
            seeds = episode_seeds(int(seed), self.num_envs)
        else:
            seeds = np.asarray(seed, dtype=np.int64)
            if seeds.shape != (self.num_envs,):
                raise ValueError(f"need {self.num_envs} seeds, got shape {seeds.shape}")
        layouts = [sample_layout(int(s)) for s in seeds]
        self._seeds = seeds
        self._start = np.stack([lay["start"] for lay in layouts])
        self._goal = np.stack([lay["goal"] for lay in layouts])
        self._center = np.stack([lay["obstacle_center"] for lay in layouts])
        self._radius = np.stack([lay["obstacle_radius"] for lay in layouts])
        self._pos = self._start.copy()
        self._vel = np.zeros_like(self._pos)
        n = self.num_envs
        self._success = np.zeros(n, bool)
        self._collision = np.zeros(n, bool)
        self._timeout = np.zeros(n, bool)
        self._elapsed = np.zeros(n, np.int64)
        self._reset_called = True
        info = self._info(np.zeros(n, bool))
        info.update(
            start=self._start.copy(),
            goal=self._goal.copy(),
            obstacle_center=self._center.copy(),
            obstacle_radius=self._radius.copy(),
        )
        if self.instructed:
            sides = np.array([instructed_side(s) for s in seeds], np.int64)
            info["instructed_side"] = sides
            info["instruction"] = np.array([INSTRUCTIONS[s] for s in sides], dtype=object)
        return self._obs(), info

    @property
    def done(self) -> np.ndarray:
        """[N] bool: the episode has ended (and the env is frozen)."""
        return self._success | self._collision | self._timeout

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Advance every running env by one control step; frozen envs ignore their action.

        Args:
            actions: [N, 2] target positions (clipped to the workspace).

        Returns:
            obs [N, S] float32, reward [N] float32, terminated [N] bool (success or
            collision), truncated [N] bool (timeout), info.
        """
        if not self._reset_called:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, ACTION_DIM)
        w = WORKSPACE_HALF_WIDTH
        target = np.clip(actions, -w, w)
        running = ~self.done
        collided = np.zeros(self.num_envs, bool)
        min_dist = self._radius + AGENT_RADIUS
        for _ in range(SUBSTEPS):
            # Envs that are done or collided this step keep their state.
            live = running & ~collided
            acc = KP * (target - self._pos) - KD * self._vel
            vel = self._vel + PHYSICS_DT * acc
            speed = np.linalg.norm(vel, axis=-1, keepdims=True)
            vel = vel * np.minimum(1.0, MAX_SPEED / np.maximum(speed, 1e-12))
            pos = np.clip(self._pos + PHYSICS_DT * vel, -w, w)
            self._vel = np.where(live[:, None], vel, self._vel)
            self._pos = np.where(live[:, None], pos, self._pos)
            dist = np.linalg.norm(self._pos - self._center, axis=-1)
            collided |= live & (dist < min_dist)
        self._elapsed += running
        at_goal = np.linalg.norm(self._pos - self._goal, axis=-1) < GOAL_TOLERANCE
        new_collision = running & collided
        new_success = running & ~collided & at_goal
        new_timeout = (
            running & ~new_collision & ~new_success & (self._elapsed >= self.max_episode_steps)
        )
        self._collision |= new_collision
        self._success |= new_success
        self._timeout |= new_timeout
        episode_end = new_collision | new_success | new_timeout
        reward = new_success.astype(np.float32)
        terminated = self._success | self._collision
        truncated = self._timeout.copy()
        return self._obs(), reward, terminated, truncated, self._info(episode_end)

    def _obs(self) -> np.ndarray:
        return np.concatenate(
            [self._pos, self._vel, self._goal, self._center, self._radius[:, None]], axis=-1
        ).astype(np.float32)

    def _info(self, episode_end: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "success": self._success.copy(),
            "collision": self._collision.copy(),
            "timeout": self._timeout.copy(),
            "done": self.done,
            "episode_end": episode_end,
            "elapsed_steps": self._elapsed.copy(),
            "seed": self._seeds.copy(),
        }


class ObstacleEnv(gymnasium.Env):
    """Single-episode gymnasium.Env view of `ObstacleVecEnv` (registered as ENV_ID).

    `reset(seed=s)` uses `s` directly as the layout seed, so it replays episode `s` of the
    vector env. Info values are scalars.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, max_episode_steps: int = MAX_EPISODE_STEPS):
        self._vec = ObstacleVecEnv(1, max_episode_steps=max_episode_steps)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**32))
        obs, info = self._vec.reset(seed=[seed], options=options)
        return obs[0], _unbatch(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self._vec.step(np.asarray(action)[None])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), _unbatch(info)


def _unbatch(info: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: (v[0].item() if v[0].ndim == 0 else v[0]) for k, v in info.items()}


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="action_gen.envs.obstacle:ObstacleEnv")
