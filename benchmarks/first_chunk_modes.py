"""Mode blending of a policy's first chunk on the obstacle task, without rollouts.

A few-step policy's failures on the obstacle task are chunks that blend the two modes:
near the noise-space boundary between "left" and "right" a one-step map has to switch
sharply, and a smooth network interpolates there, which heads into the disc (BUILD_NOTES,
issue 16). This measures that directly, in seconds instead of a 500-episode evaluation:

  for each of `--starts` evaluation episodes (the eval's own layout seeds), B =
  `--samples` chunks [B, H, A] are drawn at the episode's first observation (history
  padded as the rollout pads it) and each is executed open loop, all H actions, from the
  start state with the env's dynamics. Per chunk:
    collision   the open-loop execution hits the disc within H steps;
    blend       its lateral offset from the start->goal line at the chunk's end is below
                half the collision radius (obstacle + agent): it commits to neither side;
    left/right  the sign of that offset, for the chunks that are not blends.

A chunk is longer than what the executor runs (H = 16 of which Ta = 8), so the open-loop
collision rate is an upper bound of the closed-loop one; the blend fraction is the
quantity a few-step method has to drive down.

  python benchmarks/first_chunk_modes.py --workdir=W [--teacher=W/teacher] \
      [--num_sample_steps=1,2] [--checkpoint_steps=2000,3000] [--num_candidates=4]
      [--starts=20] [--samples=200]

prints one JSON object per (policy, steps). Needs no TensorFlow.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from action_gen import cli
from action_gen.data import schema  # noqa: E402
from action_gen.envs import obstacle  # noqa: E402
from action_gen.eval import rollout  # noqa: E402

BLEND_FRACTION_OF_RADIUS = 0.5


def first_chunk_modes(
    sample_fn,
    *,
    num_starts: int,
    samples_per_start: int,
    eval_seed: int,
    obs_horizon: int,
) -> dict:
    """The statistics of the module docstring.

    Args:
      sample_fn: (observation, seed) -> raw chunks [B, H, 2]; observation holds
        `schema.OBS_STATE` [B, T, S] and `schema.OBS_PAD_MASK` [B, T] (Policy.sample_actions).
      num_starts: E evaluation episodes (their first observations).
      samples_per_start: B chunks per start.
      eval_seed: base seed of the episodes (`obstacle.episode_seeds`).
      obs_horizon: T.
    Returns:
      {"chunks", "open_loop_collision_rate", "blend_fraction", "left_fraction",
       "right_fraction", "lateral_end_quantiles" (5/25/50/75/95%)}.
    """
    lateral_ends, collisions, radii = [], [], []
    for e, seed in enumerate(obstacle.episode_seeds(eval_seed, num_starts)):
        env = obstacle.ObstacleVecEnv(samples_per_start)
        obs, info = env.reset(seed=[int(seed)] * samples_per_start)
        history, pad_mask = rollout.initial_history(obs, obs_horizon)
        chunk = np.asarray(sample_fn({schema.OBS_STATE: history, schema.OBS_PAD_MASK: pad_mask}, e))
        if chunk.shape[0] != samples_per_start or chunk.shape[-1] != obstacle.ACTION_DIM:
            raise ValueError(f"sample_fn returned {chunk.shape}, want [B, H, 2]")
        for h in range(chunk.shape[1]):
            obs, _, _, _, step_info = env.step(chunk[:, h])
        _, lateral = obstacle.line_frame(info["start"], info["goal"], obs[:, None, :2])
        lateral_ends.append(lateral[:, 0])
        collisions.append(step_info["collision"])  # sticky: hit the disc at any step
        radii.append(info["obstacle_radius"] + obstacle.AGENT_RADIUS)  # collision radius
    lateral = np.concatenate(lateral_ends)
    blend = np.abs(lateral) < BLEND_FRACTION_OF_RADIUS * np.concatenate(radii)
    return {
        "chunks": int(lateral.size),
        "open_loop_collision_rate": float(np.mean(np.concatenate(collisions))),
        "blend_fraction": float(np.mean(blend)),
        "left_fraction": float(np.mean(~blend & (lateral > 0))),
        "right_fraction": float(np.mean(~blend & (lateral < 0))),
        "lateral_end_quantiles": [
            round(float(q), 4) for q in np.quantile(lateral, [0.05, 0.25, 0.5, 0.75, 0.95])
        ],
    }


def main(argv=None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained obstacle run")
    parser.add_argument("--teacher", default="", help="another run to measure beside it")
    parser.add_argument("--num_sample_steps", default="", help="e.g. 1,2 (default: config's)")
    parser.add_argument(
        "--checkpoint_steps", default="", help="e.g. 2000,3000 (default: the latest)"
    )
    parser.add_argument(
        "--num_candidates",
        type=int,
        default=None,
        help="sample the most stable of M chunks (objectives/from_noise.py; default: the "
        "run's stored setting); not applied to --teacher",
    )
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--eval_seed", type=int, default=None, help="default: the run's config.eval.seed"
    )
    args = parser.parse_args(argv)

    from action_gen.sample.policy import Policy

    def ints(text):
        return [int(s) for s in text.split(",") if s] or [None]

    student_sampling = (
        {} if args.num_candidates is None else {"num_candidates": args.num_candidates}
    )
    runs = [
        (args.workdir, s, c, student_sampling)
        for c in ints(args.checkpoint_steps)
        for s in ints(args.num_sample_steps)
    ]
    if args.teacher:
        runs.append((args.teacher, None, None, {}))
    for workdir, num_steps, checkpoint_step, sampling in runs:
        policy = Policy.from_checkpoint(
            workdir, step=checkpoint_step, num_sample_steps=num_steps, sampling=sampling
        )
        extra = set(policy.observation_spec) - {schema.OBS_STATE, schema.OBS_PAD_MASK}
        if extra:
            raise ValueError(
                f"{workdir}: the policy needs observation keys {sorted(extra)}; this "
                "benchmark drives the state-only obstacle task"
            )
        stats = first_chunk_modes(
            policy.sample_actions,
            num_starts=args.starts,
            samples_per_start=args.samples,
            eval_seed=int(policy.config.eval.seed if args.eval_seed is None else args.eval_seed),
            obs_horizon=policy.obs_horizon,
        )
        print(
            json.dumps(
                {
                    "workdir": workdir,
                    "checkpoint_step": checkpoint_step,  # None: the latest
                    "objective": policy.config.objective.name,
                    **policy.objective.sampling_settings,
                    "num_sample_steps": policy.num_sample_steps,
                    **stats,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
