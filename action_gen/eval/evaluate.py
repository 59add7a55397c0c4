"""Evaluate a trained checkpoint: seeded receding-horizon rollouts → results.json + plot."""

import json
import logging
import math
import os

import jax
import ml_collections

from action_gen import envs
from action_gen.data import schema
from action_gen.eval import metrics, plots, rollout
from action_gen.sample.policy import Policy

RESULTS_FILE = "results.json"
ROLLOUTS_FILE = "rollouts.npz"
PLOT_FILE = "rollouts.png"


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


def make_policy_fn(policy: Policy, seed: int) -> rollout.PolicyFn:
    """Adapts a Policy to the rollout's `policy_fn(obs_history, obs_pad_mask, rng_step,
    prompt=None, images=None)` (images: {camera: [N, T, h, w, 3] uint8})."""
    base_key = jax.random.key(seed)

    def policy_fn(obs_history, obs_pad_mask, rng_step, prompt=None, images=None):
        observation = {schema.OBS_STATE: obs_history, schema.OBS_PAD_MASK: obs_pad_mask}
        for camera, frames in (images or {}).items():
            observation[schema.image_key(camera)] = frames
        if prompt is not None:
            observation[schema.PROMPT] = prompt
        return policy.sample_actions(observation, jax.random.fold_in(base_key, rng_step))

    return policy_fn


def evaluate_policy(policy: Policy, eval_config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """Runs `eval_config.num_episodes` seeded episodes; returns (summary, rollout result)."""
    # num_envs < num_episodes runs the episodes in rounds (fewer simulator instances).
    num_envs = min(
        eval_config.get("num_envs") or eval_config.num_episodes, eval_config.num_episodes
    )
    env = envs.make_vector_env(eval_config.env, num_envs=num_envs)
    result = rollout.run_rollouts(
        env,
        make_policy_fn(policy, eval_config.seed),
        num_episodes=eval_config.num_episodes,
        seed=eval_config.seed,
        obs_horizon=policy.obs_horizon,
        action_exec_horizon=eval_config.action_exec_horizon,
        max_steps=eval_config.get("max_steps"),
    )
    if hasattr(env, "close"):  # simulator worker processes (Meta-World cameras)
        env.close()
    summary = metrics.summarize(result)
    if "goal" not in result:  # the obstacle's mode split means nothing elsewhere
        summary.pop("mode_left_fraction", None)
        summary.pop("mode_right_fraction", None)
    low, high = wilson_interval(int(result["success"].sum()), len(result["success"]))
    summary.update(success_ci95_low=low, success_ci95_high=high)
    summary.update(
        objective=policy.config.objective.name,
        # Diffusion names its sampler, flow its integrator.
        sampler=policy.config.objective.get(
            "sampler", policy.config.objective.get("integrator", "")
        ),
        num_sample_steps=policy.num_sample_steps,
        action_exec_horizon=int(eval_config.action_exec_horizon),
        eval_seed=int(eval_config.seed),
        env=eval_config.env,
    )
    return summary, result


def evaluate_checkpoint(workdir: str, eval_config: ml_collections.ConfigDict) -> dict:
    """Restores the latest checkpoint in `workdir`, evaluates it, and writes
    `results.json`, `rollouts.npz` and (if `eval_config.plot`) `rollouts.png` there."""
    policy = Policy.from_checkpoint(
        workdir, use_ema=eval_config.use_ema, num_sample_steps=eval_config.num_sample_steps
    )
    summary, result = evaluate_policy(policy, eval_config)
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    rollout.save_rollouts(result, os.path.join(workdir, ROLLOUTS_FILE))
    if eval_config.get("plot", True):
        title = f"{summary['objective']} ({os.path.basename(workdir)})"
        plots.plot_rollouts(result, os.path.join(workdir, PLOT_FILE), title)
    logging.info("eval: %s", json.dumps(summary, sort_keys=True))
    return summary
