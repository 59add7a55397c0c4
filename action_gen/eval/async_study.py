"""Inference delay study: how execution strategies hold up when a chunk takes d steps.

  python -m action_gen.eval.async_study --workdir=/tmp/flow_demo --out=/tmp/async_study \
      [--delays 0,1,2,3,4] [--modes sync,async,ensemble,rtc] [--episodes 100]

For every execution mode of `sample/executor.py` and simulated delay d (control steps
between the observation a chunk is computed from and the chunk's arrival), runs the
same seeded episodes of the built-in obstacle task with the trained policy in `workdir`
and reports success rate and the mean squared jerk at chunk boundaries:

  boundary jerk = mean over switches t of ||a_{t+1} - 3 a_t + 3 a_{t-1} - a_{t-2}||²

(the third difference straddling the switch from the old plan, a_{t-1}, to the new one,
a_t; in action units per step³, squared, like `metrics.action_jerk`). A switch is a step
whose command comes from a chunk that did not contribute the step before (in ensemble
mode every step a new chunk joins). The executor delivers a chunk exactly d steps after
its request (`simulated_delay`), so the table is reproducible; sync mode lets the d
steps pass with the last command held (the robot waits), and those steps count towards
the episode's step limit.

Writes <out>/results.json and <out>/table.md (also printed).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from action_gen import cli, envs
from action_gen.data import schema
from action_gen.envs import obstacle
from action_gen.eval import metrics, rollout
from action_gen.sample import executor as executor_lib
from action_gen.sample.policy import Policy

MODE_NAMES = {
    "sync": "synchronous",
    "async": "naive async",
    "ensemble": "temporal ensembling",
    "rtc": "RTC",
}


def boundary_jerk(actions: np.ndarray, boundaries: np.ndarray) -> list[float]:
    """Squared third differences straddling each switch t (needs t-2 >= 0, t+1 < L).

    Args:
      actions: [L, A] executed commands of one episode.
      boundaries: [L] bool, True where the command came from a newly arrived chunk.
    """
    out = []
    for t in np.flatnonzero(boundaries):
        if t < 2 or t + 1 >= len(actions):
            continue
        d3 = actions[t + 1] - 3 * actions[t] + 3 * actions[t - 1] - actions[t - 2]
        out.append(float(np.sum(np.square(d3, dtype=np.float64))))
    return out


def run_episodes(
    policy: Policy,
    mode: str,
    delay: int,
    *,
    num_episodes: int,
    seed: int,
    exec_horizon: int,
    max_steps: int = obstacle.MAX_EPISODE_STEPS,
    policy_seed: int = 0,
) -> dict:
    """Runs `num_episodes` obstacle episodes (all in one vector env) with one executor.

    Returns:
      dict of success / collision [E] bool, length [E], boundary_jerk (pooled list),
      action_jerk (all steps), held_steps, requests, seconds.
    """
    horizon, _ = policy.action_shape
    obs_horizon = policy.obs_horizon
    env = envs.make_vector_env("obstacle", num_envs=num_episodes, max_episode_steps=max_steps)
    obs, _ = env.reset(seed=obstacle.episode_seeds(seed, num_episodes))
    ex = executor_lib.ChunkExecutor(
        executor_lib.policy_sample_fn(policy, policy_seed),
        action_horizon=horizon,
        exec_horizon=exec_horizon,
        mode=mode,
        simulated_delay=delay,
        ensemble_interval=1,
    )
    history, pad_mask = rollout.initial_history(obs, obs_horizon)
    running = np.ones(num_episodes, bool)
    success = np.zeros(num_episodes, bool)
    collision = np.zeros(num_episodes, bool)
    length = np.zeros(num_episodes, np.int64)
    actions, switches = [], []
    tic = time.perf_counter()
    for _ in range(max_steps):
        if not running.any():
            break
        action = ex.act({schema.OBS_STATE: history, schema.OBS_PAD_MASK: pad_mask})
        actions.append(action)
        switches.append(ex.boundary)
        obs, _, terminated, truncated, info = env.step(action)
        length += running
        success = np.asarray(info["success"], bool)
        collision = np.asarray(info["collision"], bool)
        running = ~(np.asarray(terminated) | np.asarray(truncated))
        history = np.concatenate([history[:, 1:], obs[:, None]], axis=1)
        pad_mask = np.concatenate([pad_mask[:, 1:], np.ones((num_episodes, 1), bool)], axis=1)
    seconds = time.perf_counter() - tic
    ex.close()
    actions = np.stack(actions, axis=1)  # [E, L_max, A]
    switches = np.asarray(switches)
    per_episode = [actions[i, : length[i]] for i in range(num_episodes)]
    jerks = []
    for i in range(num_episodes):
        jerks += boundary_jerk(per_episode[i], switches[: length[i]])
    return {
        "success": success,
        "collision": collision,
        "length": length,
        "boundary_jerk": jerks,
        "action_jerk": metrics.action_jerk(per_episode),
        "held_steps": int(ex.stats["held_steps"]),
        "requests": int(ex.stats["requests"]),
        "seconds": seconds,
    }


def run_study(
    policy: Policy,
    *,
    delays=(0, 1, 2, 3, 4),
    modes=("sync", "async", "ensemble", "rtc"),
    num_episodes: int = 100,
    seed: int = 100_000,
    exec_horizon: int = 8,
    max_steps: int = obstacle.MAX_EPISODE_STEPS,
) -> list[dict]:
    """One summary row per (mode, delay): success/collision rates, boundary and overall
    jerk, mean episode length, and the policy calls made."""
    rows = []
    for mode in modes:
        if mode == "rtc" and not policy.supports_rtc:
            raise ValueError(
                f"rtc needs an objective with guided sampling; {policy.objective.name!r} has none"
            )
        for delay in delays:
            if delay + exec_horizon > policy.action_shape[0]:
                raise ValueError(
                    f"delay {delay} + exec_horizon {exec_horizon} exceeds H="
                    f"{policy.action_shape[0]}: the plan would run out during inference"
                )
            r = run_episodes(
                policy,
                mode,
                delay,
                num_episodes=num_episodes,
                seed=seed,
                exec_horizon=exec_horizon,
                max_steps=max_steps,
            )
            jerks = r["boundary_jerk"]
            rows.append(
                {
                    "mode": mode,
                    "delay": int(delay),
                    "episodes": num_episodes,
                    "success_rate": float(r["success"].mean()),
                    "collision_rate": float(r["collision"].mean()),
                    "mean_episode_length": float(r["length"].mean()),
                    "control_steps": int(r["length"].max()),
                    "boundary_jerk": float(np.mean(jerks)) if jerks else 0.0,
                    "num_boundaries": len(jerks),
                    "action_jerk": r["action_jerk"],
                    "held_steps": r["held_steps"],
                    "policy_calls": r["requests"],
                    "seconds": round(r["seconds"], 2),
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Success rate (%) and boundary jerk (x1e-3) per mode (rows) and delay (columns)."""
    delays = sorted({r["delay"] for r in rows})
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    by = {(r["mode"], r["delay"]): r for r in rows}
    head = "| mode | " + " | ".join(f"d={d}" for d in delays) + " |"
    sep = "|---|" + "---|" * len(delays)
    lines = [
        "Success rate % / mean squared jerk at chunk boundaries (x1e-3)",
        "",
        head,
        sep,
    ]
    for mode in modes:
        cells = []
        for d in delays:
            r = by.get((mode, d))
            cells.append(
                ""
                if r is None
                else f"{100 * r['success_rate']:.0f} / {1e3 * r['boundary_jerk']:.2f}"
            )
        lines.append(f"| {MODE_NAMES.get(mode, mode)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="trained flow run (checkpoints/)")
    parser.add_argument("--out", required=True, help="directory for results.json, table.md")
    parser.add_argument("--delays", default="0,1,2,3,4")
    parser.add_argument("--modes", default="sync,async,ensemble,rtc")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=100_000, help="first eval seed")
    parser.add_argument("--exec_horizon", type=int, default=8, help="s (config.eval's Ta)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(executor_lib.MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {executor_lib.MODES}")
    delays = [int(d) for d in args.delays.split(",")]

    policy = Policy.from_checkpoint(args.workdir)
    policy.compile((args.episodes,))
    rows = run_study(
        policy,
        delays=delays,
        modes=modes,
        num_episodes=args.episodes,
        seed=args.seed,
        exec_horizon=args.exec_horizon,
    )
    os.makedirs(args.out, exist_ok=True)
    table = markdown_table(rows)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"workdir": os.path.abspath(args.workdir), "rows": rows}, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
