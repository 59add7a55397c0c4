"""The README's ALOHA table: demos once per (task, observation), then each row trained,
evaluated on the dev and the test evaluation seeds, and tabulated against ACT.

  python launch/aloha_benchmark.py --workdir=/tmp/aloha_runs                # every row, CPU sizes
  python launch/aloha_benchmark.py --workdir=W --rows=dp_transfer_cube_state,flow_insertion_state
  python launch/aloha_benchmark.py --workdir=W --rows=dp_transfer_cube_image --size=gpu \\
      --workers=16                                # an image row on one GPU machine
  python launch/aloha_benchmark.py --workdir=W --rows=dp_transfer_cube_image --served \\
      --image_size=96x128                         # + the row behind the policy server
  python launch/aloha_benchmark.py --workdir=W --tabulate_only

A row is `<method>_<task>_<obs>`: method dp (diffusion) or flow, task transfer_cube or
insertion, obs state (joints + object poses) or image (top camera + joints). Per row:
  1. demos: `python -m action_gen.envs.collect --env=aloha_<task> --episodes=<demos>
     --image=none --environment_state` (state) or `--image=top:<HxW>` (image), into
     `<workdir>/demos` (once per task and observation, shared by the rows that read them);
  2. `python -m action_gen.main --config=configs/<method>_unet_aloha.py:task=T,<obs>[,cpu]
     [,steps=N],demos=<workdir>/demos --workdir=<workdir>/<row> --mode=train_and_eval`:
     trains, then evaluates on the dev seeds (the config's eval.seed, eval/seed_splits.py);
  3. the same with `--mode=eval --config.eval.seed=<test>`: the test seeds;
  4. with --served (image rows): the policy is trained for openpi's ALOHA-sim client (the
     configs' `openpi_client` variant) and also evaluated behind the policy server, driven
     by that client (`python -m action_gen.eval.served --workdir=<row> --seed=<test>`):
     `results_served.json`, its own line in the table.
Each evaluation's results.json is kept as `results_dev.json` / `results_test.json` in the
row's directory, `benchmark.json` records the commands, wall seconds and machine, and the
table (`<workdir>/results.md`, and stdout) reports test success with its 95% interval,
the dev figure beside it, the stage rates, training steps and wall time. A finished step
is skipped, so an interrupted benchmark resumes where it stopped.

--loader=memory trains from the LeRobot demos held in memory (`data.loader=memory`,
data/memory.py) instead of tf.data over their RLDS conversion: no TensorFlow, as on the lent
GPU machines (`launch/device_aloha.sh` runs this launcher there with it).

--size=cpu (default) runs the configs' `cpu` variant (U-Net (64, 128, 256), batch 128,
5,000 steps; image: ResNet width 16); --size=gpu their full sizes (DP's low-dim U-Net
(256, 512, 1024), batch 256, 20,000 steps; image: ResNet18-GN at 240x320). --steps
overrides either.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from action_gen import cli
from action_gen.eval import seed_splits
from action_gen.run import Run
from configs import diffusion_unet_aloha as aloha_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"dp": "diffusion", "flow": "flow"}
TASKS = ("transfer_cube", "insertion")
OBSERVATIONS = ("state", "image")
ROWS = tuple(f"{m}_{t}_{o}" for o in OBSERVATIONS for t in TASKS for m in METHODS)
TEST_SEED = seed_splits.TEST_SEED  # the configs evaluate on seed_splits.DEV_SEED
DEFAULT_IMAGE_SIZE = "x".join(map(str, aloha_config.DEFAULT_IMAGE_SIZE))
STAGES = {
    "transfer_cube": "touched, lifted, touched by the left, transferred",
    "insertion": "both grasped, both lifted, peg touches socket, inserted",
}
# ACT's published figures (not re-run here): tonyzhaozh/act README, "The success rate
# should be around 90% for transfer cube, and around 50% for insertion" (50 scripted
# episodes, images); LeRobot's ACT on transfer-cube, 500 episodes (human demos).
ACT_ROWS = (
    ("transfer_cube", "image", "ACT (tonyzhaozh/act README)", "50 scripted", "≈ 90%"),
    ("insertion", "image", "ACT (tonyzhaozh/act README)", "50 scripted", "≈ 50%"),
    ("transfer_cube", "image", "ACT (LeRobot, 500 episodes)", "50 human", "87.6%"),
)


def parse_row(row: str) -> dict:
    """'dp_transfer_cube_state' -> {method: diffusion, task: transfer_cube, obs: state}."""
    prefix, _, rest = row.partition("_")
    task, _, obs = rest.rpartition("_")
    if prefix not in METHODS or task not in TASKS or obs not in OBSERVATIONS:
        raise ValueError(
            f"unknown row {row!r}: want <method>_<task>_<obs> with method in "
            f"{sorted(METHODS)}, task in {list(TASKS)}, obs in {list(OBSERVATIONS)}"
        )
    return {"row": row, "method": METHODS[prefix], "task": task, "obs": obs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="Demos, runs and the table.")
    parser.add_argument("--rows", default=",".join(ROWS), help="Comma-separated rows.")
    parser.add_argument("--size", choices=("cpu", "gpu"), default="cpu", help="Model sizes.")
    parser.add_argument("--steps", type=int, default=None, help="Training steps (override).")
    parser.add_argument("--demos", type=int, default=50, help="Scripted demos per task.")
    parser.add_argument("--episodes", type=int, default=100, help="Evaluation episodes.")
    parser.add_argument("--image_size", default=DEFAULT_IMAGE_SIZE, help="Image rows' HxW.")
    parser.add_argument("--workers", type=int, default=2, help="Demo collection processes.")
    parser.add_argument(
        "--served",
        action="store_true",
        help="Image rows: train for openpi's ALOHA-sim client and evaluate behind the server.",
    )
    parser.add_argument(
        "--loader",
        choices=("tfdata", "memory"),
        default="tfdata",
        help="Training stream (data.loader): memory needs no TensorFlow.",
    )
    parser.add_argument("--tabulate_only", action="store_true", help="Only write the table.")
    args = parser.parse_args(argv)
    try:
        args.rows = [parse_row(r) for r in args.rows.split(",") if r]
    except ValueError as e:
        parser.error(str(e))
    if args.served and any(row["obs"] != "image" for row in args.rows):
        parser.error(
            "--served drives openpi's ALOHA-sim client, which sends images: image rows only"
        )
    if args.served and args.loader == "memory":
        parser.error(
            "--served trains through the client's dataset mapping (config.robot), which "
            "--loader=memory does not read: use --loader=tfdata"
        )
    if args.workers < 1 or args.demos < 1 or args.episodes < 1:
        parser.error("--workers, --demos and --episodes must be >= 1")
    return args


def config_arg(args, row: dict) -> str:
    """The `configs/<method>_unet_aloha.py:<arg>` of a row."""
    parts = [f"task={row['task']}"]
    parts.append("state" if row["obs"] == "state" else f"image={args.image_size}")
    if args.served:
        parts.append("openpi_client")
    if args.size == "cpu":
        parts.append("cpu")
    if args.steps is not None:
        parts.append(f"steps={args.steps}")
    parts.append(f"episodes={args.episodes}")
    parts.append(f"demos={demos_dir(args)}")
    return f"configs/{row['method']}_unet_aloha.py:" + ",".join(parts)


def demos_dir(args) -> str:
    return os.path.join(args.workdir, "demos")


def collect_command(args, row: dict) -> list[str]:
    image = ["--image=none", "--environment_state"]
    if row["obs"] == "image":
        image = [f"--image=top:{args.image_size}"]
    return [
        sys.executable, "-m", "action_gen.envs.collect", f"--env=aloha_{row['task']}",
        f"--episodes={args.demos}", *image, f"--workers={args.workers}",
        f"--out={demos_dir(args)}",
    ]  # fmt: skip


def demos_written(args, row: dict) -> bool:
    """Whether collect finished this row's dataset (it writes scripted_stats.json last,
    after renaming the staged dataset into place)."""
    size = None if row["obs"] == "state" else aloha_config.parse_image_size(args.image_size)
    name = aloha_config.dataset_name(row["task"], size)  # the directory the config reads
    return os.path.exists(os.path.join(demos_dir(args), name, "scripted_stats.json"))


def run(command: list[str], log_path: str) -> float:
    """Runs `command` in the repository root, output to `log_path`; its wall seconds.
    Raises with the log's tail when it fails."""
    print("$", " ".join(command), f"> {log_path}", flush=True)
    tic = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if code:
        with open(log_path) as log:
            tail = log.read()[-2000:]
        raise RuntimeError(f"exit code {code}: {' '.join(command)}\n...{tail}")
    return time.perf_counter() - tic


def run_row(args, row: dict) -> None:
    """Demos (if missing), train + dev evaluation, test evaluation; each skipped if done."""
    os.makedirs(args.workdir, exist_ok=True)
    row_dir = os.path.join(args.workdir, row["row"])
    record_path = os.path.join(row_dir, "benchmark.json")
    record = {}
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
    if not demos_written(args, row):
        run(collect_command(args, row), os.path.join(args.workdir, f"collect_{row['row']}.log"))
    config = config_arg(args, row)
    train = [sys.executable, "-m", "action_gen.main", f"--config={config}",
             f"--workdir={row_dir}"]  # fmt: skip
    if args.loader != "tfdata":
        train.append(f"--config.data.loader={args.loader}")
    steps = [
        ("dev", train + ["--mode=train_and_eval"], "train_and_dev_eval_s"),
        ("test", train + ["--mode=eval", f"--config.eval.seed={TEST_SEED}"], "test_eval_s"),
    ]
    if args.served:
        served = [sys.executable, "-m", "action_gen.eval.served", f"--workdir={row_dir}",
                  f"--episodes={args.episodes}", f"--seed={TEST_SEED}",
                  f"--out={os.path.join(row_dir, 'results_served.json')}"]  # fmt: skip
        steps.append(("served", served, "served_eval_s"))
    for split, command, seconds_key in steps:
        kept = os.path.join(row_dir, f"results_{split}.json")
        if os.path.exists(kept):
            continue
        seconds = run(command, f"{row_dir}.{split}.log")
        if split != "served":  # main writes results.json; eval.served writes --out
            os.replace(os.path.join(row_dir, "results.json"), kept)
        config = Run.open(row_dir).config()
        record.update(
            {
                seconds_key: round(seconds, 1),
                f"{split}_command": " ".join(command[1:]),
                "machine": machine(),
                "size": args.size,
                "train_steps": config.train.num_steps,
                "batch_size": config.data.batch_size,
                "loader": config.data.loader,
                "demos": args.demos,
            }
        )
        with open(record_path, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)


def machine() -> str:
    """The accelerator (or CPU) the runs used, and the CPU count."""
    import jax

    device = jax.devices()[0]
    kind = "CPU" if device.platform == "cpu" else device.device_kind
    return f"{kind}, {os.cpu_count()} CPU cores ({platform.machine()})"


def _rate(results: dict | None) -> str:
    if results is None:
        return "—"
    return (
        f"{100 * results['success_rate']:.0f}% "
        f"[{100 * results['success_ci95_low']:.1f}, {100 * results['success_ci95_high']:.1f}]"
    )


def _load(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def table(args) -> str:
    """The markdown table of every row found under --workdir, then ACT's figures."""
    lines = [
        "| task | obs | policy | demos | training | success, test seeds [95% CI] | dev seeds "
        "| stages 1 / 2 / 3 / 4 (test) | wall (train + 2 evals), size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        row = parse_row(name)
        row_dir = os.path.join(args.workdir, name)
        test = _load(os.path.join(row_dir, "results_test.json"))
        dev = _load(os.path.join(row_dir, "results_dev.json"))
        if test is None and dev is None:
            continue
        record = _load(os.path.join(row_dir, "benchmark.json")) or {}
        steps, batch = record.get("train_steps", "?"), record.get("batch_size", "?")
        steps = f"{steps:,}" if isinstance(steps, int) else steps
        shown = test or dev
        stages = " / ".join(f"{100 * shown.get(f'stage_{k}_rate', 0):.0f}" for k in range(1, 5))
        wall = sum(record.get(k, 0) for k in ("train_and_dev_eval_s", "test_eval_s")) / 60
        lines.append(
            f"| {row['task']} | {row['obs']} | {row['method']} U-Net, "
            f"{shown.get('sampler', '?')} {shown.get('num_sample_steps', '?')} | "
            f"{record.get('demos', '?')} scripted | {steps} steps × {batch} | {_rate(test)} "
            f"| {_rate(dev)} | {stages}% "
            f"| {wall:.0f} min, {record.get('size', '?')} ({record.get('machine', '?')}) |"
        )
        served = _load(os.path.join(row_dir, "results_served.json"))
        if served is not None:
            stages = " / ".join(
                f"{100 * served.get(f'stage_{k}_rate', 0):.0f}" for k in range(1, 5)
            )
            lines.append(
                f"| {row['task']} | image, behind the server (openpi's ALOHA-sim client, "
                f"{served.get('action_horizon', '?')} actions per request) | the same policy "
                f"| | | {_rate(served)} | — | {stages}% "
                f"| {record.get('served_eval_s', 0) / 60:.0f} min ({served.get('clients', '?')} "
                "clients) |"
            )
    for task, obs, policy, demos, rate in ACT_ROWS:
        lines.append(f"| {task} | {obs} | {policy} | {demos} | — | {rate} | — | — | — |")
    stages = "; ".join(f"{task}: {text}" for task, text in STAGES.items())
    return "\n".join(lines) + f"\n\nStages (share of episodes that reached each): {stages}.\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.tabulate_only:
        for row in args.rows:
            run_row(args, row)
    text = table(args)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
