"""Receding-horizon evaluation of a chunked policy on a vector env.

Every `action_exec_horizon` (Ta) control steps the policy sees the last T observations of
each env and returns a chunk of H >= Ta actions; the first Ta are executed open loop, then
it re-plans (Diffusion Policy's receding horizon). With `temporal_ensemble_decay` = m the
command at step t is instead ACT's temporal ensemble of every chunk that covers t,
Σ_k w_k chunk_k[t - start_k], w_k ∝ exp(-m k), k = 0 the oldest
(`sample.executor.ensembled_action`; ACT queries every step: Ta = 1). Envs must follow the
`envs.obstacle.ObstacleVecEnv` contract: no auto-reset, finished envs freeze, and `info`
carries [N] arrays `success` and `collision`; envs whose tasks have stages (envs/aloha.py)
also report [N] ints `stage` (how far each episode got), and may say how many there are
(`env.num_stages`).

The policy is always called on the full batch of N envs, finished ones included (their
frozen observations, their actions ignored): a fixed batch shape keeps a jitted policy from
recompiling as envs finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from action_gen import cli
from action_gen.envs import obstacle
from action_gen.sample import executor

# policy_fn(obs_history [N, T, S] raw float32, obs_pad_mask [N, T] bool, rng_step)
#   -> actions [N, H, A] raw. Envs that give instructions also pass `prompt=` [N] str;
#   envs with cameras also pass `images=` {camera: [N, T, h, w, 3] uint8}.
PolicyFn = Callable[..., np.ndarray]

_LAYOUT_KEYS = ("start", "goal", "obstacle_center", "obstacle_radius", "instructed_side")
_IMAGE_PREFIX = "image/"
_RECORD_PREFIX = "record/"  # frames filmed for a video, never given to the policy


def initial_history(obs: np.ndarray, obs_horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The observation history at an episode's start: (history [N, T, ...], obs_pad_mask
    [N, T] bool) from the first observations `obs` [N, ...], the missing past filled by
    repeating them and masked out (only the last, current, entry is real)."""
    history = np.repeat(obs[:, None], obs_horizon, axis=1)
    pad_mask = np.zeros((obs.shape[0], obs_horizon), bool)
    pad_mask[:, -1] = True
    return history, pad_mask


def _recorded_frame(obs) -> np.ndarray | None:
    """The [N, h, w, 3] frame to film from an observation: its first "record/<camera>"
    key, else its first policy camera "image/<camera>", else None (nothing to film)."""
    if not isinstance(obs, dict):
        return None
    for prefix in (_RECORD_PREFIX, _IMAGE_PREFIX):
        keys = sorted(k for k in obs if k.startswith(prefix))
        if keys:
            return np.asarray(obs[keys[0]])
    return None


def _split_observation(obs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An env observation -> (state [N, S], {camera: [N, h, w, 3]}).

    Envs return either a state array [N, S] or a dict {"state": [N, S], "image/<camera>":
    [N, h, w, 3]} (envs/metaworld.py with a camera)."""
    if not isinstance(obs, dict):
        return np.asarray(obs), {}
    if "state" not in obs:
        raise KeyError(f"dict observation without a 'state' key; keys: {sorted(obs)}")
    images = {
        k.removeprefix(_IMAGE_PREFIX): np.asarray(v)
        for k, v in obs.items()
        if k.startswith(_IMAGE_PREFIX)
    }
    return np.asarray(obs["state"]), images


def run_rollouts(
    env: Any,
    policy_fn: PolicyFn,
    *,
    num_episodes: int,
    seed: int,
    obs_horizon: int = 2,
    action_exec_horizon: int = 8,
    max_steps: int | None = None,
    record_frames: bool = False,
    temporal_ensemble_decay: float | None = None,
) -> dict[str, Any]:
    """Evaluate `policy_fn` on `num_episodes` seeded episodes, env.num_envs at a time.

    Episode i uses seed `obstacle.episode_seeds(seed, num_episodes)[i]` (prefix stable, so
    it can be replayed alone). When num_episodes is not a multiple of N the last round pads
    the batch with extra seeds whose episodes are discarded.

    Observation history: oldest first, current last. At the episode start the missing past
    is filled by repeating the first observation, with obs_pad_mask False there.

    Args:
        env: vector env with num_envs N, reset(seed=[N ints]) and step(actions [N, A]).
        policy_fn: (obs_history [N, T, S], obs_pad_mask [N, T], rng_step) -> [N, H, A],
            all raw (unnormalized) values. rng_step counts calls from 0 across all rounds,
            for the caller to fold into its PRNG key.
        num_episodes: episodes to run.
        seed: base seed.
        obs_horizon: T.
        action_exec_horizon: Ta, actions executed per policy call (needs H >= Ta).
        max_steps: cap on control steps per episode; unfinished episodes count as timeouts.
            None runs until every env is done (the env's own step limit).
        record_frames: also return `frames`, every episode's filmed frames (see
            `_recorded_frame`; the env must render them, e.g. Meta-World's `record=`).
        temporal_ensemble_decay: None executes each chunk's first Ta actions (receding
            horizon); m >= 0 executes ACT's temporal ensemble of all chunks covering the
            step (module docstring), a new chunk every Ta steps.

    Returns:
        dict with per-episode entries, E = num_episodes:
          seeds [E] int, success/collision/timeout [E] bool, length [E] int (control
          steps), side [E] int (obstacle.LEFT/RIGHT/NO_SIDE, geometric, see
          obstacle.passing_side), states list of [L_e + 1, S] (first observation
          included), positions list of [L_e + 1, 2], actions list of [L_e, A] (executed),
          start/goal/obstacle_center [E, 2] and obstacle_radius [E] when the env reports
          them at reset; max_stage [E] int, the highest `info["stage"]` an episode
          reached, and num_stages (`env.num_stages`), when the env reports stages;
          instructed_side [E] int when the env gives instructions (then
          `policy_fn` also gets `prompt=` the [N] instructions on every call; envs with
          cameras (dict observations) pass `images=` {camera: [N, T, h, w, 3]}); and
          policy_call_s, the wall time of every policy call (seconds); plus obs_horizon,
          action_exec_horizon, and temporal_ensemble_decay when ensembling; with
          `record_frames`, frames list of [L_e + 1, h, w, 3] uint8.
    """
    num_envs = env.num_envs
    all_seeds = obstacle.episode_seeds(seed, -(-num_episodes // num_envs) * num_envs)
    limit = max_steps if max_steps is not None else getattr(env, "max_episode_steps", None)
    if limit is None:
        raise ValueError("max_steps is required for an env without max_episode_steps")
    if temporal_ensemble_decay is not None and temporal_ensemble_decay < 0:
        raise ValueError(f"temporal_ensemble_decay={temporal_ensemble_decay} must be >= 0")

    per_episode: dict[str, list] = {k: [] for k in ("success", "collision", "length")}
    states_out, actions_out, frames_out = [], [], []
    layout: dict[str, list] = {k: [] for k in _LAYOUT_KEYS}
    call_times: list[float] = []
    rng_step = 0
    bar = cli.progress(num_episodes, "eval episodes")
    for first in range(0, len(all_seeds), num_envs):
        obs, info = env.reset(seed=all_seeds[first : first + num_envs])
        frame_log = [_recorded_frame(obs)] if record_frames else []
        if record_frames and frame_log[0] is None:
            raise ValueError("record_frames=True but the env's observations carry no frames")
        obs, images = _split_observation(obs)
        image_history = {k: np.repeat(v[:, None], obs_horizon, axis=1) for k, v in images.items()}
        for k in _LAYOUT_KEYS:
            if k in info:
                layout[k].append(np.asarray(info[k]))
        prompt_kwargs = {}
        if images:
            prompt_kwargs["images"] = image_history
        if "instruction" in info:
            prompt_kwargs["prompt"] = np.asarray(info["instruction"], dtype=object)
        history, pad_mask = initial_history(obs, obs_horizon)
        # Stages are tracked as a running maximum: an episode's stage can drop again (a
        # lifted object falls back) and the furthest one reached is what to report.
        max_stage = np.asarray(info["stage"], np.int64).copy() if "stage" in info else None
        running = np.ones(num_envs, bool)
        success = np.zeros(num_envs, bool)
        collision = np.zeros(num_envs, bool)
        length = np.zeros(num_envs, np.int64)
        state_log, action_log = [obs], []
        plans: list[executor.Chunk] = []  # the chunks an ensembled command averages
        t = 0
        while running.any() and t < limit:
            tic = time.perf_counter()
            chunk = np.asarray(
                policy_fn(history.copy(), pad_mask.copy(), rng_step, **prompt_kwargs)
            )
            call_times.append(time.perf_counter() - tic)
            rng_step += 1
            if chunk.ndim != 3 or chunk.shape[0] != num_envs:
                raise ValueError(f"policy returned shape {chunk.shape}, want [N={num_envs}, H, A]")
            if chunk.shape[1] < action_exec_horizon:
                raise ValueError(
                    f"chunk length {chunk.shape[1]} < action_exec_horizon {action_exec_horizon}"
                )
            if temporal_ensemble_decay is not None:
                plans = [p for p in plans if t < p.start + p.actions.shape[1]]
                plans.append(executor.Chunk(start=t, actions=chunk))
            for k in range(action_exec_horizon):
                if not running.any() or t >= limit:
                    break
                if temporal_ensemble_decay is None:
                    action = chunk[:, k]
                else:
                    action = executor.ensembled_action(plans, t, temporal_ensemble_decay)
                obs, _, terminated, truncated, info = env.step(action)
                if record_frames:
                    frame_log.append(_recorded_frame(obs))
                obs, images = _split_observation(obs)
                for key, frame in images.items():
                    image_history[key] = np.concatenate(
                        [image_history[key][:, 1:], frame[:, None]], axis=1
                    )
                action_log.append(action)
                state_log.append(obs)
                length += running
                success = np.asarray(info["success"], bool)
                collision = np.asarray(info["collision"], bool)
                if max_stage is not None:
                    max_stage = np.maximum(max_stage, np.asarray(info["stage"], np.int64))
                was_running = running
                running = ~(np.asarray(terminated) | np.asarray(truncated))
                ended = int(np.sum(was_running & ~running))
                bar.update(min(ended, max(0, num_episodes - bar.n)))
                history = np.concatenate([history[:, 1:], obs[:, None]], axis=1)
                pad_mask = np.concatenate([pad_mask[:, 1:], np.ones((num_envs, 1), bool)], axis=1)
                t += 1
        bar.update(min(int(running.sum()), max(0, num_episodes - bar.n)))  # at the limit
        states = np.stack(state_log, axis=1)  # [N, t + 1, S]
        actions = np.stack(action_log, axis=1) if action_log else np.zeros((num_envs, 0, 0))
        frames = np.stack(frame_log, axis=1) if frame_log else None  # [N, t + 1, h, w, 3]
        for i in range(num_envs):
            states_out.append(states[i, : length[i] + 1])
            actions_out.append(actions[i, : length[i]])
            if frames is not None:
                frames_out.append(frames[i, : length[i] + 1])
        per_episode["success"].append(success)
        per_episode["collision"].append(collision)
        per_episode["length"].append(length)
        if max_stage is not None:
            per_episode.setdefault("max_stage", []).append(max_stage)

    bar.close()
    e = num_episodes
    result: dict[str, Any] = {k: np.concatenate(v)[:e] for k, v in per_episode.items()}
    result["timeout"] = ~(result["success"] | result["collision"])
    result["seeds"] = all_seeds[:e]
    result["states"] = states_out[:e]
    result["positions"] = [s[:, obstacle.POS] for s in result["states"]]
    result["actions"] = actions_out[:e]
    if record_frames:
        result["frames"] = frames_out[:e]
    for k, v in layout.items():
        if v:
            result[k] = np.concatenate(v)[:e]
    if "goal" in result and "obstacle_center" in result:
        result["side"] = np.array(
            [
                obstacle.passing_side(p, p[0], g, c)
                for p, g, c in zip(
                    result["positions"], result["goal"], result["obstacle_center"], strict=True
                )
            ],
            np.int64,
        )
    else:  # no obstacle layout (e.g. Meta-World): no passing side to measure
        result["side"] = np.full(e, obstacle.NO_SIDE, np.int64)
    if "max_stage" in result and hasattr(env, "num_stages"):
        result["num_stages"] = int(env.num_stages)
    result["policy_call_s"] = np.asarray(call_times)
    result["obs_horizon"] = obs_horizon
    result["action_exec_horizon"] = action_exec_horizon
    if temporal_ensemble_decay is not None:
        result["temporal_ensemble_decay"] = float(temporal_ensemble_decay)
    return result


_RAGGED_KEYS = ("states", "positions", "actions")


def save_rollouts(result: dict[str, Any], path: str) -> None:
    """Writes a `run_rollouts` result to `.npz` (ragged per-episode arrays concatenated
    with their lengths; plain arrays only, so loading never unpickles). Filmed `frames`
    are not stored (eval/media.py writes them as a GIF and a frame strip)."""
    arrays = {}
    for key, value in result.items():
        if key == "frames":
            continue
        if key in _RAGGED_KEYS:
            arrays[f"{key}__lengths"] = np.asarray([len(v) for v in value], np.int64)
            arrays[f"{key}__concat"] = (
                np.concatenate(value) if len(value) else np.zeros((0,), np.float32)
            )
        else:
            arrays[key] = np.asarray(value)
    np.savez_compressed(path, **arrays)


def load_rollouts(path: str) -> dict[str, Any]:
    """Inverse of `save_rollouts`."""
    with np.load(path, allow_pickle=False) as data:
        raw = {key: data[key] for key in data.files}
    result: dict[str, Any] = {}
    for key, value in raw.items():
        if key.endswith("__lengths"):
            name = key[: -len("__lengths")]
            ends = np.cumsum(value)
            concat = raw[f"{name}__concat"]
            result[name] = [concat[e - n : e] for n, e in zip(value, ends, strict=True)]
        elif not key.endswith("__concat"):
            result[key] = value.item() if value.ndim == 0 else value
    return result
