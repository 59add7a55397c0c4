"""Evaluate a trained checkpoint: seeded receding-horizon rollouts → results.json + plot."""

import json
import logging
import math
import os
import re

import jax
import ml_collections
import numpy as np

from action_gen import envs, objectives
from action_gen import run as run_lib
from action_gen.data import images as image_tools
from action_gen.data import schema
from action_gen.eval import media, metrics, plots, rollout, seed_splits
from action_gen.sample.policy import Policy

RESULTS_FILE = "results.json"
ROLLOUTS_FILE = "rollouts.npz"
PLOT_FILE = "rollouts.png"
VIDEO_FILE = "rollouts.gif"
FRAME_STRIP_FILE = "frames.png"


def _suffixed(filename: str, suffix: str) -> str:
    stem, ext = os.path.splitext(filename)
    return f"{stem}{suffix}{ext}"


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a success rate (95% for the default z).

      center = (p + z^2 / 2n) / (1 + z^2 / n),
      half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),   p = successes / n

    Unlike the normal approximation it stays inside [0, 1] and is not empty at p = 0 or 1.
    """
    if trials <= 0:
        return 0.0, 1.0
    p, n, z2 = successes / trials, trials, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 (p = 1) the lower (upper) bound is exactly 0 (1); avoid rounding residue.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def summarize_rollouts(result: dict) -> dict:
    """`metrics.summarize` of a rollout result (`rollout.run_rollouts`'s layout), without the
    obstacle's mode split where the env has no goal, with the success rate's 95% interval."""
    summary = metrics.summarize(result)
    if "goal" not in result:  # the obstacle's mode split means nothing elsewhere
        summary.pop("mode_left_fraction", None)
        summary.pop("mode_right_fraction", None)
    low, high = wilson_interval(int(result["success"].sum()), len(result["success"]))
    summary.update(success_ci95_low=low, success_ci95_high=high)
    return summary


def make_policy_fn(policy: Policy, seed: int) -> rollout.PolicyFn:
    """Adapts a Policy to the rollout's `policy_fn(obs_history, obs_pad_mask, rng_step,
    prompt=None, images=None)` (images: {camera: [N, T, h, w, 3] uint8}).

    A simulator frame of another size than the model's camera is resized as the training
    stream resized the recording (data/images.resize_with_pad: e.g. a 96x128 render
    letterboxed into the 128x128 square of a model served to openpi's 224x224 clients)."""
    base_key = jax.random.key(seed)
    sizes = {
        key: tuple(shape[-3:-1])
        for key, (shape, _) in policy.observation_spec.items()
        if key.startswith(schema.OBS_IMAGE_PREFIX)
    }

    def policy_fn(obs_history, obs_pad_mask, rng_step, prompt=None, images=None):
        observation = {schema.OBS_STATE: obs_history, schema.OBS_PAD_MASK: obs_pad_mask}
        for camera, frames in (images or {}).items():
            key = schema.image_key(camera)
            frames = np.asarray(frames)
            if key in sizes and frames.shape[-3:-1] != sizes[key]:
                flat = frames.reshape(-1, *frames.shape[-3:])
                frames = image_tools.resize_frames(flat, *sizes[key]).reshape(
                    *frames.shape[:-3], *sizes[key], 3
                )
            observation[key] = frames
        if prompt is not None:
            observation[schema.PROMPT] = prompt
        return policy.sample_actions(observation, jax.random.fold_in(base_key, rng_step))

    return policy_fn


def evaluate_policy(policy: Policy, eval_config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """Runs `eval_config.num_episodes` seeded episodes; returns (summary, rollout result)."""
    # num_envs < num_episodes runs the episodes in rounds (fewer simulator instances).
    num_envs = min(eval_config.num_envs or eval_config.num_episodes, eval_config.num_episodes)
    env = envs.make_vector_env(eval_config.env, num_envs=num_envs)
    result = rollout.run_rollouts(
        env,
        make_policy_fn(policy, eval_config.seed),
        num_episodes=eval_config.num_episodes,
        seed=eval_config.seed,
        obs_horizon=policy.obs_horizon,
        action_exec_horizon=eval_config.action_exec_horizon,
        max_steps=eval_config.max_steps,
        temporal_ensemble_decay=eval_config.temporal_ensemble_decay,
    )
    if hasattr(env, "close"):  # simulator worker processes (Meta-World cameras)
        env.close()
    summary = summarize_rollouts(result)
    summary.update(
        policy.objective.summary(),
        num_sample_steps=policy.num_sample_steps,
        action_exec_horizon=int(eval_config.action_exec_horizon),
        temporal_ensemble_decay=eval_config.temporal_ensemble_decay,
        eval_seed=int(eval_config.seed),
        eval_seed_split=seed_splits.split_of(eval_config.seed),
        env=eval_config.env,
    )
    return summary, result


def record_episodes(
    policy: Policy, eval_config: ml_collections.ConfigDict, workdir: str, suffix: str = ""
) -> dict:
    """Films the first `eval.record_episodes` evaluation episodes (same seeds, so the same
    layouts; the policy's sampling noise differs from the scored run) with the camera
    `eval.record` ("corner2:128") and writes `rollouts<suffix>.gif` and
    `frames<suffix>.png` (green border: success, red: failure). Returns their paths."""
    count = int(eval_config.record_episodes)
    env = envs.make_vector_env(eval_config.env, num_envs=count, record=eval_config.record)
    try:
        result = rollout.run_rollouts(
            env,
            make_policy_fn(policy, eval_config.seed),
            num_episodes=count,
            seed=eval_config.seed,
            obs_horizon=policy.obs_horizon,
            action_exec_horizon=eval_config.action_exec_horizon,
            max_steps=eval_config.max_steps,
            temporal_ensemble_decay=eval_config.temporal_ensemble_decay,
            record_frames=True,
        )
    finally:
        if hasattr(env, "close"):
            env.close()
    paths = {
        "video": os.path.join(workdir, _suffixed(VIDEO_FILE, suffix)),
        "frame_strip": os.path.join(workdir, _suffixed(FRAME_STRIP_FILE, suffix)),
    }
    media.save_gif(paths["video"], result["frames"], result["success"])
    media.save_frame_strip(paths["frame_strip"], result["frames"], result["success"])
    return paths


def _env_list(env) -> list[str]:
    """`eval.env`: one env name or a list of them (a multi-task policy)."""
    return [env] if isinstance(env, str) else [str(e) for e in env]


def env_slug(env: str) -> str:
    """A file-name-safe form of an env name ('metaworld:push@corner2:96' -> 'push_corner2_96')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", env.split(":", 1)[-1]).strip("_")


def sampling_overrides(eval_config: ml_collections.ConfigDict) -> dict:
    """The objective's sampling settings that `eval_config` sets besides num_sample_steps
    and clip_sample (e.g. `eval.num_candidates`): they override the checkpoint's stored
    values, as those two do."""
    return {
        key: eval_config[key]
        for key in eval_config
        if key in objectives.SAMPLING_FIELDS and key not in ("num_sample_steps", "clip_sample")
    }


def evaluate_checkpoint(workdir: str, eval_config: ml_collections.ConfigDict) -> dict:
    """Restores the checkpoint in `workdir` at `eval_config.checkpoint_step` (-1: the
    latest), evaluates it, and writes
    `results.json`, `rollouts.npz` and (if `eval_config.plot`) `rollouts.png` there.

    With a list of envs in `eval_config.env` (a multi-task policy) each env is evaluated
    on `eval_config.num_episodes` episodes; results.json then holds every env's summary
    under "tasks", and their mean success rate (with the pooled 95% interval) on top,
    and the rollouts go to `rollouts_<env>.npz`. With `eval_config.record` set (a camera,
    "corner2:128") a few episodes per env are also filmed (`record_episodes`).
    """
    run_dir = run_lib.Run.open(workdir, role="policy")
    step = int(eval_config.checkpoint_step)
    step = run_dir.latest_step() if step == -1 else step
    if step not in run_dir.manager.all_steps():
        raise ValueError(
            f"eval.checkpoint_step={step}: {run_dir.directory} has checkpoints at steps "
            f"{sorted(run_dir.manager.all_steps())}"
        )
    policy = Policy.from_checkpoint(
        workdir,
        step=step,
        use_ema=eval_config.use_ema,
        num_sample_steps=eval_config.num_sample_steps,
        clip_sample=eval_config.clip_sample,
        sampling=sampling_overrides(eval_config),
    )
    env_names = _env_list(eval_config.env)
    if not env_names:
        raise ValueError("eval.env is empty: name the env (or envs) to evaluate on")
    per_env = {}
    for name in env_names:
        one = ml_collections.ConfigDict({**eval_config.to_dict(), "env": name})
        summary, result = evaluate_policy(policy, one)
        per_env[name] = summary
        suffix = "" if len(env_names) == 1 else f"_{env_slug(name)}"
        rollout.save_rollouts(result, os.path.join(workdir, _suffixed(ROLLOUTS_FILE, suffix)))
        if eval_config.plot:
            title = f"{summary['objective']} ({os.path.basename(workdir)})"
            plots.plot_rollouts(result, os.path.join(workdir, _suffixed(PLOT_FILE, suffix)), title)
        if eval_config.record:
            summary["media"] = record_episodes(policy, one, workdir, suffix)
        if len(env_names) > 1:
            logging.info("eval %s: %s", name, json.dumps(summary, sort_keys=True))
    summary = per_env[env_names[0]] if len(env_names) == 1 else _multi_task_summary(per_env)
    summary["checkpoint_step"] = step
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    logging.info("eval: %s", json.dumps(summary, sort_keys=True))
    return summary


# Keys every task of a multi-task evaluation shares, copied to its top-level summary.
SHARED_SUMMARY_KEYS = ("objective", "sampler", "num_sample_steps", "eval_seed", "eval_seed_split")


def _multi_task_summary(per_env: dict[str, dict]) -> dict:
    """Mean success over tasks (equal weight per task) plus every task's own summary."""
    rates = [s["success_rate"] for s in per_env.values()]
    successes = sum(round(s["success_rate"] * s["episodes"]) for s in per_env.values())
    episodes = sum(int(s["episodes"]) for s in per_env.values())
    low, high = wilson_interval(successes, episodes)
    first = next(iter(per_env.values()))
    return {
        "success_rate": float(sum(rates) / len(rates)),
        "success_ci95_low": low,
        "success_ci95_high": high,
        "collision_rate": float(sum(s["collision_rate"] for s in per_env.values()) / len(rates)),
        "episodes": episodes,
        "num_tasks": len(per_env),
        "tasks": per_env,
        **{k: first[k] for k in SHARED_SUMMARY_KEYS},
    }
