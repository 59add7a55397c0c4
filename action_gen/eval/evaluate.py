"""Evaluate a trained checkpoint: seeded receding-horizon rollouts → results.json + plot."""

import json
import logging
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


def make_policy_fn(policy: Policy, seed: int) -> rollout.PolicyFn:
    """Adapts a Policy to the rollout's `policy_fn(obs_history, obs_pad_mask, rng_step,
    prompt=None)`."""
    base_key = jax.random.key(seed)

    def policy_fn(obs_history, obs_pad_mask, rng_step, prompt=None):
        observation = {schema.OBS_STATE: obs_history, schema.OBS_PAD_MASK: obs_pad_mask}
        if prompt is not None:
            observation[schema.PROMPT] = prompt
        return policy.sample_actions(observation, jax.random.fold_in(base_key, rng_step))

    return policy_fn


def evaluate_policy(policy: Policy, eval_config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """Runs `eval_config.num_episodes` seeded episodes; returns (summary, rollout result)."""
    env = envs.make_vector_env(eval_config.env, num_envs=eval_config.num_episodes)
    result = rollout.run_rollouts(
        env,
        make_policy_fn(policy, eval_config.seed),
        num_episodes=eval_config.num_episodes,
        seed=eval_config.seed,
        obs_horizon=policy.obs_horizon,
        action_exec_horizon=eval_config.action_exec_horizon,
        max_steps=eval_config.get("max_steps"),
    )
    summary = metrics.summarize(result)
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
