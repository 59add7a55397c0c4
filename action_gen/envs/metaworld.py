"""Meta-World (MuJoCo Sawyer arm, 50 tasks) as a vector env, plus its scripted experts.

Optional dependency: `pip install 'action_gen[sim]'` (metaworld, mujoco; metaworld needs
`packaging` at import). Rendering is headless: `MUJOCO_GL=egl` is set (unless the caller
chose a backend) when the first env is built, before MuJoCo is imported.

Any Meta-World task works by name ("push", "push-v3" or "Meta-World/MT1 push-v3"): the
env is `gym.make("Meta-World/MT1", env_name=..., seed=...)` and the expert is
`metaworld.policies.ENV_POLICY_MAP[env_name]`. An episode's layout (object and goal
positions) is a pure function of the seed passed to `reset`: positions are drawn from the
task's continuous random-reset ranges (not MT1's 50 fixed layouts), so demo and evaluation
episodes with different seeds have different layouts.

Observations. State-only: the env's 39-d vector [hand xyz, gripper, obj1 pose (7),
obj2 pose (7), the same 18 from the previous frame, goal xyz]. With a camera
(`camera="corner2", image_size=96`) the policy gets robot proprioception only (hand xyz +
gripper opening, 4-d: no object or goal state, the image must tell it) and the camera frame
[h, w, 3] uint8, flipped upright (MuJoCo's `corner*` cameras render upside down).

Env spec strings (used by configs, `envs.make_vector_env` and demo collection):
  "metaworld:push"               state observations
  "metaworld:push@corner2:96"    corner2 camera at 96x96 + proprio
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from action_gen.envs import workers

SPEC_PREFIX = "metaworld:"
EXPERT_STATS_FILE = "expert_stats.json"
ENV_VERSION = "v3"
PROPRIO = slice(0, 4)  # hand xyz + gripper opening
STATE_KEY = "state"
IMAGE_PREFIX = "image/"
RECORD_PREFIX = "record/"  # frames rendered for a video only, never fed to the policy
# Cameras whose frames MuJoCo renders upside down.
_FLIPPED_CAMERAS = ("corner", "corner2", "corner3", "corner4")
# Expert attempts per requested demo before collection gives up (failed episodes are
# dropped; the experts succeed on >= ~90% of episodes of most tasks).
MAX_ATTEMPTS_FACTOR = 4

# Instructions for the development tasks; any other task gets one derived from its name.
_DESCRIPTIONS = {
    "reach": "reach the red goal position",
    "push": "push the puck to the goal",
    "pick-place": "pick up the puck and place it at the goal",
    "door-open": "open the door",
    "drawer-open": "open the drawer",
    "drawer-close": "close the drawer",
    "button-press-topdown": "press the button from the top",
    "peg-insert-side": "insert the peg into the hole from the side",
    "window-open": "slide the window open",
    "window-close": "slide the window closed",
}


def _import_metaworld():
    # Headless rendering; must be set before mujoco is first imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the Meta-World/* gym ids)
        from metaworld import policies
    except ImportError as e:
        raise ImportError(
            f"Meta-World is not installed ({e}); install the extra: pip install 'action_gen[sim]'"
        ) from e
    return gym, policies


def env_name(task: str) -> str:
    """'push' / 'push-v3' / 'Meta-World/MT1 push-v3' -> 'push-v3'."""
    name = task.strip().split()[-1]
    if not re.fullmatch(r"[a-z0-9-]+", name):
        raise ValueError(f"not a Meta-World task name: {task!r}")
    return name if re.search(r"-v\d+$", name) else f"{name}-{ENV_VERSION}"


def base_name(task: str) -> str:
    """'push-v3' -> 'push'."""
    return re.sub(r"-v\d+$", "", env_name(task))


def task_description(task: str) -> str:
    """The language instruction of a task (used as every step's instruction)."""
    name = base_name(task)
    return _DESCRIPTIONS.get(name, name.replace("-", " "))


def parse_spec(spec: str) -> dict[str, Any]:
    """'metaworld:push@corner2:96' -> {task: 'push-v3', camera: 'corner2', image_size: 96}."""
    body = spec.removeprefix(SPEC_PREFIX)
    camera, size = None, None
    if "@" in body:
        body, view = body.split("@", 1)
        camera, size = parse_image_flag(view)
    return {"task": env_name(body), "camera": camera, "image_size": size}


def parse_image_flag(value: str) -> tuple[str, int]:
    """'corner2:96' -> ('corner2', 96)."""
    match = re.fullmatch(r"([A-Za-z0-9_]+):(\d+)", value.strip())
    if not match or int(match.group(2)) <= 0:
        raise ValueError(f"image option must be CAMERA:SIZE (e.g. corner2:96), got {value!r}")
    return match.group(1), int(match.group(2))


def make_spec(task: str, camera: str | None = None, image_size: int | None = None) -> str:
    """Inverse of `parse_spec`."""
    spec = SPEC_PREFIX + base_name(task)
    return spec if camera is None else f"{spec}@{camera}:{int(image_size)}"


class MetaWorldEnv:
    """One Meta-World task instance: seeded reset, state (+ image) observations.

    Observations are dicts {"state": [S] float32, "image/<camera>": [h, w, 3] uint8};
    S = 39 without a camera, 4 (proprio) with one. With `record=True` the camera only
    films: the state stays the full 39-d vector and the frame is "record/<camera>".
    `full_state` keeps the 39-d vector (the scripted expert needs it). Rendering must not
    happen in a process that has loaded TensorFlow: use `make_env`, which runs camera
    envs in a worker process.
    """

    def __init__(
        self, task: str, camera: str | None = None, image_size: int = 96, record: bool = False
    ):
        gym, policies = _import_metaworld()
        self.task = env_name(task)
        self.camera = camera
        self.record = bool(record)
        self.image_size = int(image_size)
        kwargs = {}
        if camera is not None:
            kwargs = dict(
                render_mode="rgb_array",
                camera_name=camera,
                width=self.image_size,
                height=self.image_size,
            )
        try:
            self._env = gym.make("Meta-World/MT1", env_name=self.task, seed=0, **kwargs)
        except ValueError as e:
            raise ValueError(f"unknown Meta-World task {task!r} ({self.task}): {e}") from e
        self.max_episode_steps = int(self._env.unwrapped.max_path_length)
        # MT1 picks one of 50 fixed layouts per reset with an RNG that carries over between
        # episodes, so a reset seed alone would not fix the layout. Instead: set a task once
        # (required by the env), stop the per-reset task sampling, and let each reset draw
        # fresh object/goal positions from the env's RNG seeded with the episode's seed.
        self._env.reset()
        wrapper = self._env
        while not hasattr(wrapper, "toggle_sample_tasks_on_reset") and hasattr(wrapper, "env"):
            wrapper = wrapper.env
        if hasattr(wrapper, "toggle_sample_tasks_on_reset"):
            wrapper.toggle_sample_tasks_on_reset(False)
        self.action_space = self._env.action_space
        self._policy_cls = policies.ENV_POLICY_MAP.get(self.task)
        self.full_state = None
        self._expert = None

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action [4] for the current (full) state, in [-1, 1]."""
        if self._policy_cls is None:
            raise ValueError(f"Meta-World has no scripted expert for {self.task}")
        if self._expert is None:  # the experts are stateless; one per env suffices
            self._expert = self._policy_cls()
        return np.clip(self._expert.get_action(self.full_state), -1.0, 1.0).astype(np.float32)

    def _observe(self, full_state: np.ndarray) -> dict[str, np.ndarray]:
        self.full_state = np.asarray(full_state, np.float64)
        if self.camera is None:
            return {STATE_KEY: self.full_state.astype(np.float32)}
        frame = np.asarray(self._env.render(), np.uint8)
        if self.camera in _FLIPPED_CAMERAS:
            frame = frame[::-1]
        if self.record:
            return {
                STATE_KEY: self.full_state.astype(np.float32),
                RECORD_PREFIX + self.camera: np.ascontiguousarray(frame),
            }
        return {
            STATE_KEY: self.full_state[PROPRIO].astype(np.float32),
            IMAGE_PREFIX + self.camera: np.ascontiguousarray(frame),
        }

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        unwrapped = self._env.unwrapped
        unwrapped.seed(int(seed))
        unwrapped._freeze_rand_vec = False
        unwrapped.seeded_rand_vec = True
        full_state, _ = self._env.reset()
        return self._observe(full_state)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool]:
        """Returns (observation, reward, success, truncated at the step limit)."""
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        full_state, reward, _, truncated, info = self._env.step(action)
        return self._observe(full_state), float(reward), bool(info["success"]), bool(truncated)

    def close(self):
        self._env.close()


class RemoteMetaWorldEnv(workers.WorkerEnv):
    """A MetaWorldEnv in a spawned worker process, with the same methods (envs/workers.py:
    MuJoCo's EGL renderer and TensorFlow cannot share a process). A 96x96 frame crossing
    the pipe is 27 KB, negligible next to rendering it."""

    label = "Meta-World"
    crash_hint = "rendering in a process that imported TensorFlow"

    def __init__(
        self, task: str, camera: str | None = None, image_size: int = 96, record: bool = False
    ):
        super().__init__(
            MetaWorldEnv, task=task, camera=camera, image_size=image_size, record=record
        )
        self.camera, self.image_size = camera, image_size

    def expert_action(self) -> np.ndarray:
        return self._call("expert_action")


def make_env(task: str, camera: str | None = None, image_size: int = 96, record: bool = False):
    """A MetaWorldEnv; with a camera, one running in its own process (RemoteMetaWorldEnv)."""
    if camera is None:
        return MetaWorldEnv(task)
    return RemoteMetaWorldEnv(task, camera, image_size, record)


class MetaWorldVecEnv:
    """N Meta-World envs behind the `envs.obstacle.ObstacleVecEnv` contract.

    `reset(seed=[N ints])`, `step(actions [N, A])`; no auto-reset: an env that finished
    (success, or `max_episode_steps`) is frozen, keeps returning its last observation and
    ignores its actions. Observations are dicts of [N, ...] arrays ({"state": [N, S],
    "image/<camera>": [N, h, w, 3] uint8}); `info` carries [N] bools `success` (the
    simulator's own `info["success"]`, sticky once reached) and `collision` (always False,
    kept for the rollout contract), and `instruction` [N] at reset.

    `record=(camera, size)` films a state-observation env: observations keep the 39-d
    state and add "record/<camera>" [N, size, size, 3] frames for a rollout video (the
    rollout never feeds "record/" keys to the policy).
    """

    def __init__(
        self,
        num_envs: int,
        task: str,
        *,
        camera: str | None = None,
        image_size: int = 96,
        max_episode_steps: int | None = None,
        record: tuple[str, int] | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if record is not None:
            if camera is not None:
                raise ValueError("record= films a state-observation env; this one has a camera")
            camera, image_size = record
        self.num_envs = num_envs
        self.envs = [
            make_env(task, camera, image_size, record is not None) for _ in range(num_envs)
        ]
        self.task = self.envs[0].task
        limit = self.envs[0].max_episode_steps
        self.max_episode_steps = min(limit, max_episode_steps or limit)
        self.instruction = task_description(self.task)
        self._obs: list[dict] = []
        self._done = np.ones(num_envs, bool)
        self._success = np.zeros(num_envs, bool)
        self._steps = np.zeros(num_envs, np.int64)

    def _stack(self) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in self._obs]) for k in self._obs[0]}

    def reset(self, seed) -> tuple[dict, dict]:
        seeds = np.asarray(seed, np.int64).reshape(-1)
        if seeds.shape[0] != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} seeds, got {seeds.shape[0]}")
        self._obs = workers.call_all(self.envs, "reset", [(int(s),) for s in seeds])
        self._done[:] = False
        self._success[:] = False
        self._steps[:] = 0
        info = {
            "success": self._success.copy(),
            "collision": np.zeros(self.num_envs, bool),
            "instruction": np.asarray([self.instruction] * self.num_envs, dtype=object),
        }
        return self._stack(), info

    def step(self, actions) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(actions, np.float32)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"step needs [{self.num_envs}, A] actions, got {actions.shape}")
        reward = np.zeros(self.num_envs, np.float32)
        truncated = np.zeros(self.num_envs, bool)
        running = np.flatnonzero(~self._done)
        results = workers.call_all(
            [self.envs[i] for i in running], "step", [(actions[i],) for i in running]
        )
        for i, (obs, rew, success, trunc) in zip(running, results, strict=True):
            self._obs[i], reward[i] = obs, rew
            self._steps[i] += 1
            self._success[i] |= success
            truncated[i] = (trunc or self._steps[i] >= self.max_episode_steps) and not success
            self._done[i] = success or truncated[i]
        info = {"success": self._success.copy(), "collision": np.zeros(self.num_envs, bool)}
        return self._stack(), reward, self._success.copy(), self._done & ~self._success, info

    def close(self):
        for env in self.envs:
            env.close()


def make_vector_env(spec: str, num_envs: int, **kwargs) -> MetaWorldVecEnv:
    """A MetaWorldVecEnv from a spec string ("metaworld:push@corner2:96").

    kwargs: `max_episode_steps`, and `record="corner2:128"` to film a state-observation
    env (an image env films itself: its "image/<camera>" frames are recorded).
    """
    parsed = parse_spec(spec)
    if kwargs.get("record") is not None:
        if parsed["camera"] is not None:
            kwargs.pop("record")  # the policy's own camera frames are the recording
        else:
            kwargs["record"] = parse_image_flag(kwargs["record"])
    image = {} if parsed["camera"] is None else {"image_size": parsed["image_size"]}
    return MetaWorldVecEnv(num_envs, parsed["task"], camera=parsed["camera"], **image, **kwargs)


def expert_episodes(
    task: str,
    num_episodes: int,
    seed: int,
    *,
    camera: str | None = None,
    image_size: int = 96,
    max_episode_steps: int | None = None,
    post_success_steps: int = 0,
    stats: dict | None = None,
) -> Iterator[dict]:
    """Successful scripted-expert demonstrations, one RLDS episode dict at a time.

    Attempt j uses seed `obstacle.episode_seeds(seed, .)[j]` (prefix stable); failed
    attempts are dropped until `num_episodes` succeeded. Each episode ends at the step on
    which the simulator first reports success, plus `post_success_steps` more expert
    steps (within the step limit) when asked: an episode cut at first success shows the
    approach to the goal region but never arrival in it, so a policy that falls a little
    short has never seen what the expert does next.

    Args:
      stats: if given, filled with `attempts`, `successes` and `seeds` (kept) as it runs,
        so the caller can report the expert's own success rate.
    Yields:
      {"observation": {"state": [L, S], "image/<camera>": [L, h, w, 3]}, "action": [L, 4],
       "reward": [L], "language_instruction": str, "episode_metadata": {"seed": int}}.
    Raises:
      RuntimeError: when `MAX_ATTEMPTS_FACTOR * num_episodes` attempts do not suffice.
    """
    from tqdm.auto import tqdm

    from action_gen.envs.obstacle import episode_seeds

    env = make_env(task, camera, image_size)
    limit = min(env.max_episode_steps, max_episode_steps or env.max_episode_steps)
    instruction = task_description(env.task)
    seeds = episode_seeds(seed, MAX_ATTEMPTS_FACTOR * num_episodes)
    stats = {} if stats is None else stats
    stats.update(attempts=0, successes=0, seeds=[])
    progress = tqdm(total=num_episodes, desc=f"demos {env.task}", unit="episode")
    try:
        for episode_seed in seeds:
            if stats["successes"] == num_episodes:
                return
            stats["attempts"] += 1
            observation = env.reset(episode_seed)
            obs_log, actions, rewards, first_success = [], [], [], None
            for t in range(limit):
                action = env.expert_action()
                obs_log.append(observation)
                actions.append(action)
                observation, reward, success, truncated = env.step(action)
                rewards.append(reward)
                if success and first_success is None:
                    first_success = t
                done = first_success is not None and t - first_success >= post_success_steps
                if truncated or done:
                    break
            if first_success is None:
                continue
            stats["successes"] += 1
            stats["seeds"].append(int(episode_seed))
            progress.update(1)
            yield {
                "observation": {k: np.stack([o[k] for o in obs_log]) for k in obs_log[0]},
                "action": np.stack(actions),
                "reward": np.asarray(rewards, np.float32),
                "language_instruction": instruction,
                "episode_metadata": {"seed": np.int64(episode_seed)},
            }
        if stats["successes"] < num_episodes:
            raise RuntimeError(
                f"the {env.task} expert succeeded on only {stats['successes']} of "
                f"{stats['attempts']} episodes; wanted {num_episodes}"
            )
    finally:
        progress.close()
        env.close()


def collect_to_rlds(
    spec: str,
    out_dir: str,
    *,
    num_episodes: int,
    seed: int,
    max_episode_steps: int | None = None,
    post_success_steps: int = 0,
) -> str:
    """Scripted-expert demos of `spec` ("metaworld:push[@corner2:96]") written as RLDS under
    `out_dir/metaworld_<task>[_<camera><size>]/1.0.0`; returns that directory. The expert's
    own success rate (successes / attempts, and the kept seeds) and the collection settings
    go to `<that directory>/expert_stats.json`."""
    from action_gen.data import rlds

    parsed = parse_spec(spec)
    image = {} if parsed["camera"] is None else {"image_size": parsed["image_size"]}
    stats: dict = {}
    episodes = expert_episodes(
        parsed["task"],
        num_episodes,
        seed,
        camera=parsed["camera"],
        max_episode_steps=max_episode_steps,
        post_success_steps=post_success_steps,
        stats=stats,
        **image,
    )
    name = "metaworld_" + base_name(parsed["task"]).replace("-", "_")
    if parsed["camera"] is not None:
        name += f"_{parsed['camera']}{parsed['image_size']}"

    path = rlds.write_rlds_dataset(
        episodes,
        out_dir,
        name=name,
        description=f"Meta-World {parsed['task']} scripted-expert demos ({spec}); "
        f"episodes={num_episodes} seed={seed} post_success_steps={post_success_steps}",
    )
    # Beside the TFDS metadata (which is written before the count is known).
    stats["success_rate"] = stats["successes"] / max(stats["attempts"], 1)
    stats.update(spec=spec, task=parsed["task"], seed=seed, post_success_steps=post_success_steps)
    with open(os.path.join(path, EXPERT_STATS_FILE), "w") as f:
        json.dump(stats, f, indent=2)
    return path


def check_collection_settings(path: str, *, post_success_steps: int) -> None:
    """Refuses to reuse demos in `path` collected with another `post_success_steps` (read
    from its expert_stats.json; datasets from before the setting existed used 0)."""
    stats_file = os.path.join(path, EXPERT_STATS_FILE)
    if not os.path.exists(stats_file):
        return  # not collected here (a user's dataset): nothing to compare
    with open(stats_file) as f:
        stored = int(json.load(f).get("post_success_steps", 0))
    if stored != post_success_steps:
        raise ValueError(
            f"{stats_file}: these demos were collected with post_success_steps={stored}, "
            f"but data.demo_post_success_steps={post_success_steps}; point data.dataset_dir "
            "at another directory or use the stored value"
        )
