"""The README's Meta-World table: every (method, task) run, K at a time, then the table.

  python launch/metaworld_benchmark.py --workdir=/tmp/mw_runs --parallel=2
  python launch/metaworld_benchmark.py --workdir=/tmp/mw_runs --tabulate_only

Each run is the plain `--mode=train_and_eval` command of `configs/<method>_unet_metaworld.py`
(the `cpu` variant, 50 demos, 50 evaluation episodes on seeds disjoint from the demos), in
`<workdir>/<prefix>_<task>[_<extra>]`; the demos of a task are collected once, into
`<workdir>/data/<task>`, by the first run of the task, and every other state-observation run
of it waits for them and reads them (`--config.data.dataset_dir`: same seeds, so the
same demos a run of its own would collect). Options:

  --steps=push=6000,peg-insert-side=6000   per-task `steps=` (default: the config's 2,000);
                                           `flow:reach=6000` sets one method's only
  --multitask                              also the multi-task diffusion policy over all
                                           the tasks (`task=A+B+...`, --multitask_steps)
  --image_tasks=button-press-topdown,...   image policies (`image=corner2:64`, diffusion)

A finished run (results.json present) is skipped, so an interrupted benchmark resumes.
`--reevaluate` instead re-runs only the evaluation (`--mode=eval` on the stored checkpoint,
with the config's current eval and sampler settings) of every run that has checkpoints,
rewriting its results.json: e.g. after a sampling setting changed.
The table goes to `<workdir>/results.md` and `results.csv` (and stdout): per task the
scripted expert's success over the demo attempts (`expert_stats.json`), each method's
success with its 95% Wilson interval, and the ratio to the expert.
"""

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import time

from action_gen import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_TASKS = (
    "reach",
    "push",
    "pick-place",
    "door-open",
    "drawer-open",
    "drawer-close",
    "button-press-topdown",
    "peg-insert-side",
    "window-open",
    "window-close",
)
METHODS = {"diffusion": "dp", "flow": "flow", "regression": "reg"}  # method -> dir prefix


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="Runs, datasets and the table.")
    parser.add_argument("--tasks", type=_csv, default=list(DEV_TASKS), help="Task names.")
    parser.add_argument("--methods", type=_csv, default=list(METHODS), help="Objectives.")
    parser.add_argument(
        "--steps", type=_csv, default=[], help="task=steps or method:task=steps overrides."
    )
    parser.add_argument("--multitask", action="store_true", help="Also the multi-task policy.")
    parser.add_argument("--multitask_steps", type=int, default=10_000)
    parser.add_argument("--image_tasks", type=_csv, default=[], help="Image-policy tasks.")
    parser.add_argument("--image", default="corner2:64", help="Camera:size of image policies.")
    parser.add_argument("--image_steps", type=int, default=3_000)
    parser.add_argument("--parallel", type=int, default=2, help="Runs at a time.")
    parser.add_argument("--tabulate_only", action="store_true", help="Only write the table.")
    parser.add_argument(
        "--reevaluate", action="store_true", help="Only re-evaluate the trained runs."
    )
    args = parser.parse_args(argv)
    for method in args.methods:
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; use {sorted(METHODS)}")
    overrides = {}
    for item in args.steps:
        key, sep, value = item.partition("=")
        method = key.split(":")[0] if ":" in key else None
        if not sep or not value.isdigit() or (method is not None and method not in METHODS):
            parser.error(f"--steps item {item!r}: use TASK=STEPS or METHOD:TASK=STEPS")
        overrides[key] = int(value)
    args.steps = overrides
    return args


def train_steps(args, method: str, task: str) -> int | None:
    """The `steps=` override of (method, task): `method:task=N`, else `task=N`, else None
    (the config's own budget)."""
    return args.steps.get(f"{method}:{task}", args.steps.get(task))


def steps_extra(args, method: str, task: str) -> str:
    steps = train_steps(args, method, task)
    return f"steps={steps}" if steps is not None else ""


def _csv(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def run_dir(workdir: str, method: str, task: str, extra: str = "") -> str:
    """`<workdir>/<prefix>_<task>[_<extra with '=' and ',' as '_'>]`."""
    suffix = "" if not extra else "_" + extra.replace("=", "_").replace(",", "_")
    return os.path.join(workdir, f"{METHODS[method]}_{task}{suffix}")


def data_dir(workdir: str, task: str) -> str:
    """Where the state-observation demos of `task` are collected (once, shared)."""
    return os.path.join(workdir, "data", task)


def multitask_dir(args, workdir: str) -> str:
    return os.path.join(workdir, f"mt_dp_{args.multitask_steps}")


def image_extra(args) -> str:
    return f"image={args.image},steps={args.image_steps}"


def _config_file(method: str) -> str:
    return os.path.join("configs", f"{method}_unet_metaworld.py")


def plan_runs(args, workdir: str) -> list[dict]:
    """The runs, in launch order: diffusion first, then flow, regression, image policies,
    and the multi-task policy."""
    runs = []
    for method in sorted(args.methods, key=lambda m: m != "diffusion"):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use {sorted(METHODS)}")
        for task in args.tasks:
            extra = steps_extra(args, method, task)
            arg = f"task={task},cpu" + (f",{extra}" if extra else "")
            command = [
                sys.executable,
                "-m",
                "action_gen.main",
                f"--config={_config_file(method)}:{arg}",
                f"--config.data.dataset_dir={data_dir(workdir, task)}",
            ]
            # The first run of a task collects its demos; the others wait for them.
            collects = not any(r.get("task") == task for r in runs)
            runs.append(
                {
                    "dir": run_dir(workdir, method, task, extra),
                    "command": command,
                    "task": task,
                    "collects": collects,
                }
            )
    for task in args.image_tasks:
        extra = image_extra(args)
        arg = f"task={task},cpu,{extra}"
        command = [
            sys.executable,
            "-m",
            "action_gen.main",
            f"--config={_config_file('diffusion')}:{arg}",
        ]
        runs.append({"dir": run_dir(workdir, "diffusion", task, extra), "command": command})
    if args.multitask:
        mt_dir = multitask_dir(args, workdir)
        tasks = "+".join(args.tasks)
        arg = f"task={tasks},cpu,steps={args.multitask_steps}"
        command = [
            sys.executable,
            "-m",
            "action_gen.main",
            f"--config={_config_file('diffusion')}:{arg}",
        ]
        runs.append({"dir": mt_dir, "command": command, "multitask": True})
    mode = "eval" if args.reevaluate else "train_and_eval"
    for run in runs:
        run["command"] += [f"--workdir={run['dir']}", f"--mode={mode}"]
    return runs


def _link_task_datasets(args, workdir: str, mt_dir: str) -> bool:
    """Points `<mt_dir>/dataset/<task>` at each task's collected demos; False while any
    task's demos are not written yet."""
    os.makedirs(os.path.join(mt_dir, "dataset"), exist_ok=True)
    for task in args.tasks:
        source = data_dir(workdir, task)
        if not glob.glob(os.path.join(source, "*", "*", "dataset_info.json")):
            return False
        link = os.path.join(mt_dir, "dataset", task)
        if not os.path.islink(link):
            os.symlink(source, link)
    return True


def _demos_ready(args, workdir: str, run: dict) -> bool:
    """A run that reads another run's demos waits until they are written."""
    if run.get("multitask"):
        return _link_task_datasets(args, workdir, run["dir"])
    if "task" in run and not run["collects"]:
        pattern = os.path.join(data_dir(workdir, run["task"]), "*", "*", "dataset_info.json")
        return bool(glob.glob(pattern))
    return True


def runs_to_start(args, runs: list[dict]) -> list[dict]:
    """The unfinished runs (no results.json); with --reevaluate, the trained ones (with
    checkpoints), whether evaluated before or not."""
    if not args.reevaluate:
        return [r for r in runs if not os.path.exists(os.path.join(r["dir"], "results.json"))]
    trained = [r for r in runs if os.path.isdir(os.path.join(r["dir"], "checkpoints"))]
    for run in runs:
        if run not in trained:
            print(f"{os.path.basename(run['dir'])}: not trained, not re-evaluated")
    return trained


def execute(args, workdir: str, runs: list[dict]) -> None:
    """Runs `runs_to_start`, `--parallel` at a time, logging each to `<dir>/log.txt`
    (`<dir>/eval_log.txt` with --reevaluate)."""
    pending = runs_to_start(args, runs)
    log_name = "eval_log.txt" if args.reevaluate else "log.txt"
    active: list[tuple[dict, subprocess.Popen, float]] = []
    while pending or active:
        for entry in list(active):
            run, proc, start = entry
            if proc.poll() is not None:
                active.remove(entry)
                status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                print(f"{os.path.basename(run['dir'])}: {status}, {time.time() - start:.0f} s")
        ready = [r for r in pending if args.reevaluate or _demos_ready(args, workdir, r)]
        while ready and len(active) < args.parallel:
            run = ready.pop(0)
            pending.remove(run)
            os.makedirs(run["dir"], exist_ok=True)
            log = open(os.path.join(run["dir"], log_name), "w")  # noqa: SIM115
            proc = subprocess.Popen(run["command"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            active.append((run, proc, time.time()))
        time.sleep(5)


def _expert_rate(directory: str) -> float | None:
    paths = glob.glob(os.path.join(directory, "*", "*", "expert_stats.json"))
    if not paths:
        return None
    with open(paths[0]) as f:
        return float(json.load(f)["success_rate"])


def _results(run_directory: str) -> dict | None:
    path = os.path.join(run_directory, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def tabulate(args, workdir: str) -> list[dict]:
    """One row per task: expert success, and per method success [95% CI] and its ratio to
    the expert. A task run with a `steps=` override is found under its own directory."""
    rows = []
    for task in args.tasks:
        expert = _expert_rate(data_dir(workdir, task))
        row = {"task": task, "expert": expert}
        for method in args.methods:
            result = _results(run_dir(workdir, method, task, steps_extra(args, method, task)))
            if result is None:
                continue
            row[method] = result["success_rate"]
            row[f"{method}_steps"] = train_steps(args, method, task)
            row[f"{method}_ci95"] = (result["success_ci95_low"], result["success_ci95_high"])
            if expert:
                row[f"{method}_vs_expert"] = result["success_rate"] / expert
        multitask = _results(multitask_dir(args, workdir))
        per_task = (multitask or {}).get("tasks", {}).get(f"metaworld:{task}")
        if per_task:
            row["multitask"] = per_task["success_rate"]
            row["multitask_ci95"] = (per_task["success_ci95_low"], per_task["success_ci95_high"])
            if expert:
                row["multitask_vs_expert"] = per_task["success_rate"] / expert
        image = _results(run_dir(workdir, "diffusion", task, image_extra(args)))
        if image:
            row["image"] = image["success_rate"]
            row["image_ci95"] = (image["success_ci95_low"], image["success_ci95_high"])
        rows.append(row)
    return rows


def _fmt(rate, interval=None, steps=None) -> str:
    """`92% [81, 97]`; `100% [93, 100] (6k steps)` for a run with a `steps=` override."""
    if rate is None:
        return "—"
    text = f"{100 * rate:.0f}%"
    if interval is not None:
        text += f" [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]"
    if steps is not None:
        text += f" ({steps / 1000:g}k steps)"
    return text


def write_table(args, workdir: str, rows: list[dict]) -> str:
    """results.md (one column per method, then the multi-task and image policies when
    run) and results.csv; returns the markdown."""
    methods = list(args.methods)
    methods += [c for c in ("multitask", "image") if any(c in row for row in rows)]
    header = "| task | expert | " + " | ".join(methods) + " |"
    lines = [header, "|" + "---|" * (2 + len(methods))]
    for row in rows:
        cells = [row["task"], _fmt(row.get("expert"))]
        cells += [_fmt(row.get(m), row.get(f"{m}_ci95"), row.get(f"{m}_steps")) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    for m in methods:
        ratios = [r[f"{m}_vs_expert"] for r in rows if f"{m}_vs_expert" in r]
        if ratios:
            lines.append(
                f"\n{m}: mean success / expert = {sum(ratios) / len(ratios):.2f} over "
                f"{len(ratios)} tasks; min {min(ratios):.2f}"
            )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k != "task", k))
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    if not args.tabulate_only:
        execute(args, workdir, plan_runs(args, workdir))
    print(write_table(args, workdir, tabulate(args, workdir)))


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
