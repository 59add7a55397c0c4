"""Sweeps: expand a config's `get_sweep(arg)` into runs, run or emit them, collect results.

  python launch/sweep.py --config=configs/ablation_obstacle.py:runlocal --workdir=DIR \
      [--parallel=K] [--emit=slurm|tpu] [--dry_run]

`get_sweep(arg)` returns a list of dicts, one per run: `name` (the run's label, the
`method` column), optional `config_arg` (the arg after ':' for that run; default the
sweep's arg) and dotted config overrides (`"objective.num_sample_steps": 3`).

Train once, evaluate many: runs whose configs differ only in inference-time knobs
(INFERENCE_KEYS: sampler, integrator, eta, clip_sample, temperature, num_sample_steps,
eval.*) share ONE trained checkpoint in `DIR/train/<first run's name>`; every run is then
evaluated on its own in `DIR/runs/<name>` by this script's eval mode
(`--eval_checkpoint=...`), which restores the shared parameters and builds the policy from
the run's OWN config. Every directory gets `command.sh` with its exact command lines.

Layout of DIR:
  dataset/               the built-in task's demonstrations (generated once, shared)
  train/<group>/         checkpoints, tensorboard, command.sh, log.txt, job.json
  runs/<name>/           results.json, rollouts.npz/png, command.sh, log.txt, job.json
  results.md, results.csv, results.png   one row per run, `method` column
  jobs/ (with --emit)    one job script per train group and run, and submit.sh

Local execution runs `python -m action_gen.main` (training) and this script (evaluation)
as subprocesses, K at a time: trainings are queued first, and each run's evaluation
starts as soon as its own training has ended.
"""

import csv
import importlib.util
import json
import logging
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from action_gen import cli, objectives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_SCRIPT = os.path.abspath(__file__)

# Config keys that only change how a trained model is sampled / evaluated.
INFERENCE_KEYS = frozenset(f"objective.{k}" for k in objectives.SAMPLING_FIELDS)
INFERENCE_PREFIXES = ("eval.",)
RUN_FIELDS = ("name", "config_arg")

# Columns of results.md / results.csv, in order (missing values are left blank).
COLUMNS = (
    "method",
    "objective",
    "sampler",
    "num_sample_steps",
    "success_rate",
    "collision_rate",
    "mode_left_fraction",
    "mode_right_fraction",
    "action_jerk",
    "quantization_error_normalized",
    "quantization_error_raw",
    "chunk_latency_ms",
    "policy_call_ms",
    "episodes",
    "train_group",
    "train_seconds",
    "eval_seconds",
    "status",
)


# ---------------------------------------------------------------------------- expansion


def split_config_flag(value: str) -> tuple[str, str | None]:
    """'configs/x.py:runlocal' -> (absolute path, 'runlocal'); no ':' -> (path, None)."""
    path, sep, arg = value.partition(":")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no config file at {path}")
    return path, (arg if sep else None)


def load_sweep(config_path: str, arg: str | None) -> list[dict]:
    """The config module's `get_sweep(arg)`, validated: unique non-empty names."""
    spec = importlib.util.spec_from_file_location("_sweep_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{config_path} has no get_sweep(arg); nothing to sweep")
    try:
        runs = module.get_sweep(arg)
    except (ValueError, KeyError) as e:  # the config refuses its arg (a bad variant)
        raise cli.UserError(f"--config={config_path}:{arg}: {e.args[0] if e.args else e}") from e
    if not runs:
        raise ValueError(f"{config_path}: get_sweep({arg!r}) returned no runs")
    names = []
    for i, run in enumerate(runs):
        name = run.get("name") if isinstance(run, dict) else None
        if not name or not isinstance(name, str) or "/" in name:
            raise ValueError(f"{config_path}: get_sweep() entry {i} needs a 'name' (no '/')")
        names.append(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{config_path}: get_sweep() names repeat: {duplicates}")
    return [dict(run) for run in runs]


def is_inference_key(key: str) -> bool:
    return key in INFERENCE_KEYS or key.startswith(INFERENCE_PREFIXES)


def _override_flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={_flag_value(v)}" for k, v in sorted(overrides.items())]


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def training_key(run: dict, default_arg: str | None) -> tuple:
    """What fixes a run's trained parameters: its config arg and non-inference overrides."""
    overrides = {k: v for k, v in run.items() if k not in RUN_FIELDS and not is_inference_key(k)}
    return (
        run.get("config_arg", default_arg),
        tuple(sorted((k, repr(v)) for k, v in overrides.items())),
    )


def plan(
    config_path: str, arg: str | None, runs: list[dict], workdir: str, python: str = sys.executable
) -> dict:
    """Groups runs by training key and builds every command line.

    Returns:
      {"dataset_dir": str, "trains": [job], "evals": [job]}; a job is
      {"name", "dir", "command" (argv list), "train_group"}; every eval job's
      `train_group` names the train job whose checkpoint it evaluates.
    """
    workdir = os.path.abspath(workdir)
    dataset_dir = os.path.join(workdir, "dataset")
    groups: dict[tuple, dict] = {}
    trains, evals = [], []
    for run in runs:
        key = training_key(run, arg)
        config_arg = run.get("config_arg", arg)
        config_flag = f"--config={config_path}" + (f":{config_arg}" if config_arg else "")
        overrides = {k: v for k, v in run.items() if k not in RUN_FIELDS}
        if key not in groups:
            train_dir = os.path.join(workdir, "train", run["name"])
            train_overrides = {k: v for k, v in overrides.items() if not is_inference_key(k)}
            groups[key] = {
                "name": run["name"],
                "dir": train_dir,
                "command": [
                    python,
                    "-m",
                    "action_gen.main",
                    config_flag,
                    f"--workdir={train_dir}",
                    "--mode=train",
                    f"--config.data.dataset_dir={dataset_dir}",
                    *_override_flags(train_overrides),
                ],
            }
            trains.append(groups[key])
        group = groups[key]
        run_dir = os.path.join(workdir, "runs", run["name"])
        evals.append(
            {
                "name": run["name"],
                "dir": run_dir,
                "train_group": group["name"],
                "command": [
                    python,
                    SWEEP_SCRIPT,
                    config_flag,
                    f"--workdir={run_dir}",
                    f"--eval_checkpoint={group['dir']}",
                    f"--config.data.dataset_dir={dataset_dir}",
                    *_override_flags(overrides),
                ],
            }
        )
    return {"dataset_dir": dataset_dir, "trains": trains, "evals": evals}


def write_command_files(sweep_plan: dict) -> None:
    """`command.sh` in every train and run directory: the exact command(s) of that job."""
    trains = {t["name"]: t for t in sweep_plan["trains"]}
    for job in sweep_plan["trains"]:
        _write_script(
            job["dir"], "command.sh", [f"cd {shlex.quote(REPO)}", shlex.join(job["command"])]
        )
    for job in sweep_plan["evals"]:
        train = trains[job["train_group"]]
        lines = [
            f"cd {shlex.quote(REPO)}",
            f"# trained once for every run of group {train['name']!r} by:",
            f"# {shlex.join(train['command'])}",
            shlex.join(job["command"]),
        ]
        _write_script(job["dir"], "command.sh", lines)


def _write_script(directory: str, filename: str, lines: list[str], header: list[str] = ()) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    with open(path, "w") as f:
        f.write("\n".join(["#!/bin/bash", *header, "set -euo pipefail", *lines]) + "\n")
    os.chmod(path, 0o755)
    return path


# ---------------------------------------------------------------------------- emitting


def emit_job_scripts(sweep_plan: dict, workdir: str, kind: str, dataset_command: list[str] | None):
    """One job script per train group and per run under `workdir/jobs`, and `submit.sh`.

    slurm: `sbatch` scripts (one process per node); evaluations depend on their training
      with `--dependency=afterok:<id>`.
    tpu: scripts that run the command on every worker of a TPU VM pod
      (`gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all`); submit.sh
      runs them in order.
    Returns the path of submit.sh.
    """
    jobs_dir = os.path.join(os.path.abspath(workdir), "jobs")
    os.makedirs(jobs_dir, exist_ok=True)
    ext = {"slurm": "sbatch", "tpu": "sh"}[kind]
    submit = [f"cd {shlex.quote(jobs_dir)}"]
    if dataset_command:
        # Generated once on the submitting host, before any job reads it.
        submit.append(f"(cd {shlex.quote(REPO)} && {shlex.join(dataset_command)})")

    def script(name: str, command: list[str], log_dir: str) -> str:
        body = shlex.join(command)
        if kind == "slurm":
            header = [
                f"#SBATCH --job-name={name}",
                f"#SBATCH --output={log_dir}/slurm-%j.out",
                "#SBATCH --nodes=1",
                "#SBATCH --ntasks-per-node=1",
            ]
            lines = [f"cd {shlex.quote(REPO)}", f"srun {body}"]
        else:
            header = [': "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"']
            remote = f"cd {shlex.quote(REPO)} && {body}"
            lines = [
                'gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all '
                f"--command={shlex.quote(remote)}"
            ]
        return _write_script(jobs_dir, f"{name}.{ext}", lines, header)

    for job in sweep_plan["trains"]:
        path = script(f"train_{job['name']}", job["command"], job["dir"])
        if kind == "slurm":
            submit.append(f"train_{job['name']}=$(sbatch --parsable {shlex.quote(path)})")
        else:
            submit.append(f"bash {shlex.quote(path)}")
    for job in sweep_plan["evals"]:
        path = script(f"eval_{job['name']}", job["command"], job["dir"])
        if kind == "slurm":
            submit.append(
                f"sbatch --dependency=afterok:${{train_{job['train_group']}}} {shlex.quote(path)}"
            )
        else:
            submit.append(f"bash {shlex.quote(path)}")
    return _write_script(jobs_dir, "submit.sh", submit)


# ---------------------------------------------------------------------------- running


def run_jobs(jobs: list[dict], parallel: int, env: dict | None = None) -> dict[str, int]:
    """Runs jobs as subprocesses, `parallel` at a time, in list order; returns
    {key: returncode} with key = a job's `key` (default its `name`).

    A job with `after` (another job's key) starts only once that job has exited 0; if it
    failed, the job is not run (return code None). So evaluations start as soon as THEIR
    training ends, not after every training. Each job's output goes to `<dir>/log.txt`,
    its wall time and exit code to `<dir>/job.json`.
    """
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    key = lambda job: job.get("key", job["name"])  # noqa: E731
    pending, running, codes = list(jobs), [], {}
    while pending or running:
        for job in list(pending):
            after = job.get("after")
            if after is not None and after in codes and codes[after] != 0:
                pending.remove(job)  # its dependency failed: skip it
                codes[key(job)] = None
                logging.warning("skip %s: %s failed", job["name"], after)
        ready = [j for j in pending if j.get("after") is None or codes.get(j["after"]) == 0]
        while ready and len(running) < parallel:
            job = ready.pop(0)
            pending.remove(job)
            os.makedirs(job["dir"], exist_ok=True)
            log = open(os.path.join(job["dir"], "log.txt"), "w")
            logging.info("start %s: %s", job["name"], shlex.join(job["command"]))
            proc = subprocess.Popen(
                job["command"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running.append((job, proc, log, time.perf_counter()))
        time.sleep(0.2)
        for entry in list(running):
            job, proc, log, start = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log.close()
            seconds = time.perf_counter() - start
            codes[key(job)] = proc.returncode
            with open(os.path.join(job["dir"], "job.json"), "w") as f:
                json.dump({"seconds": round(seconds, 1), "returncode": proc.returncode}, f)
            status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
            logging.info(
                "%s %s in %.0f s (log: %s/log.txt)", status, job["name"], seconds, job["dir"]
            )
        if (
            pending
            and not running
            and not any(j.get("after") is None or j["after"] in codes for j in pending)
        ):
            raise ValueError(f"jobs wait on unknown dependencies: {[j['name'] for j in pending]}")
    return codes


def dataset_command(config_path: str, arg: str | None, dataset_dir: str) -> list[str] | None:
    """The command that writes the built-in task's demos once for the whole sweep (None
    when the config reads an existing dataset or it is already there)."""
    spec = importlib.util.spec_from_file_location("_sweep_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.get_config(arg).data
    if data.dataset_dir or not data.builtin_task:
        return None
    if os.path.isdir(dataset_dir) and os.listdir(dataset_dir):
        return None
    return [
        sys.executable,
        "-m",
        "action_gen.envs.collect",
        f"--env={data.builtin_task}",
        f"--episodes={data.num_demo_episodes}",
        f"--seed={data.demo_seed}",
        f"--out={dataset_dir}",
    ]


# ---------------------------------------------------------------------------- collecting


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def collect_results(workdir: str, sweep_plan: dict) -> list[dict]:
    """One row per run from `runs/<name>/results.json` (+ job.json wall times); writes
    results.csv, results.md and results.png in `workdir`. Missing results give a row with
    status 'missing' (or 'failed' when the job exited non-zero)."""
    rows = []
    train_dirs = {t["name"]: t["dir"] for t in sweep_plan["trains"]}
    for job in sweep_plan["evals"]:
        result = _read_json(os.path.join(job["dir"], "results.json"))
        eval_job = _read_json(os.path.join(job["dir"], "job.json")) or {}
        train_job = _read_json(os.path.join(train_dirs[job["train_group"]], "job.json")) or {}
        row = {"method": job["name"], "train_group": job["train_group"]}
        if result is None:
            failed = eval_job.get("returncode") or train_job.get("returncode")
            row["status"] = "failed" if failed else "missing"
        else:
            row.update({k: result[k] for k in COLUMNS if k in result and k != "method"})
            row["status"] = "ok"
        row["train_seconds"] = train_job.get("seconds")
        row["eval_seconds"] = eval_job.get("seconds")
        rows.append(row)
    write_csv(rows, os.path.join(workdir, "results.csv"))
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(markdown_table(rows) + "\n")
    plot_results(rows, os.path.join(workdir, "results.png"))
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "—"
    if key in ("success_rate", "collision_rate", "mode_left_fraction", "mode_right_fraction"):
        return f"{100 * float(value):.0f}%"
    if key.startswith("quantization_error") or key == "action_jerk":
        return f"{float(value):.2e}"
    if key in ("policy_call_ms", "chunk_latency_ms"):
        return f"{float(value):.1f}"
    if key.endswith("_seconds"):
        return f"{float(value):.0f}"
    return str(value)


MARKDOWN_COLUMNS = (
    ("method", "method"),
    ("success_rate", "success"),
    ("collision_rate", "collisions"),
    ("mode_left_fraction", "left"),
    ("mode_right_fraction", "right"),
    ("action_jerk", "jerk"),
    ("quantization_error_normalized", "quant. err (norm.)"),
    ("quantization_error_raw", "quant. err (raw)"),
    ("chunk_latency_ms", "ms / chunk (B=1)"),
    ("episodes", "episodes"),
    ("train_group", "checkpoint"),
    ("status", "status"),
)


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(title for _, title in MARKDOWN_COLUMNS) + " |"
    rule = "|" + "---|" * len(MARKDOWN_COLUMNS)
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, row.get(k)) for k, _ in MARKDOWN_COLUMNS) + " |")
    return "\n".join(lines)


def plot_results(rows: list[dict], path: str) -> None:
    """Bar charts, one panel per metric, one bar per run (missing values drawn empty)."""
    import matplotlib  # noqa: PLC0415 - only the collecting step needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = (
        ("success_rate", "success"),
        ("collision_rate", "collisions"),
        ("mode_left_fraction", "left fraction"),
        ("action_jerk", "jerk of executed actions (log)"),
        ("chunk_latency_ms", "ms per chunk, B=1 (log)"),
    )
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.35 * len(rows) + 2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [float(r[key]) if r.get(key) not in (None, "") else 0.0 for r in rows]
        ax.barh(range(len(rows)), values, color="tab:blue")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(names if ax is axes[0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        # Jerk and latency span orders of magnitude across methods.
        if key in ("action_jerk", "chunk_latency_ms") and any(v > 0 for v in values):
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- eval mode


def evaluate_run(config, workdir: str, checkpoint_dir: str) -> dict:
    """Evaluates `config` (a run's own config) with the params trained in `checkpoint_dir`.

    Writes results.json (plus the tokens objective's quantization error of the
    demonstrations), rollouts.npz and rollouts.png into `workdir`.
    """
    from action_gen.eval import evaluate, plots, rollout  # noqa: PLC0415 - heavy imports
    from action_gen.sample.policy import Policy  # noqa: PLC0415

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    # The run's own config, refused if it differs from the checkpoint's in anything the
    # checkpoint fixes (only inference keys may differ).
    policy = Policy.from_checkpoint(
        checkpoint_dir,
        config=config,
        use_ema=config.eval.use_ema,
        num_sample_steps=config.eval.num_sample_steps,
    )
    summary, result = evaluate.evaluate_policy(policy, config.eval)
    summary["checkpoint_dir"] = os.path.abspath(checkpoint_dir)
    summary["chunk_latency_ms"] = chunk_latency_ms(policy)
    if policy.objective.representation_error is not None:
        summary.update(
            policy.objective.representation_error(
                _dataset_actions(
                    config.data.dataset_dir or os.path.join(checkpoint_dir, "dataset")
                ),
                policy.norm_stats["actions"],
                config.data.action_norm,
            )
        )
    with open(os.path.join(workdir, evaluate.RESULTS_FILE), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    rollout.save_rollouts(result, os.path.join(workdir, evaluate.ROLLOUTS_FILE))
    if config.eval.get("plot", True):
        plots.plot_rollouts(
            result, os.path.join(workdir, evaluate.PLOT_FILE), os.path.basename(workdir)
        )
    logging.info("eval: %s", json.dumps(summary, sort_keys=True))
    return summary


def chunk_latency_ms(policy, repeats: int = 30, warmup: int = 2) -> float:
    """Fastest wall time (ms) of one `policy.sample_actions` call for ONE observation
    (batch 1, the deployment case) over `repeats` calls after `warmup` (compilation
    excluded). The minimum, not the median: on a shared machine other processes only ever
    add time, so the fastest call is the best estimate of the policy's own cost."""
    import numpy as np  # noqa: PLC0415

    from action_gen.data import schema  # noqa: PLC0415

    observation = {
        schema.OBS_STATE: np.zeros((1, policy.obs_horizon, policy.state_dim), np.float32),
        schema.OBS_PAD_MASK: np.ones((1, policy.obs_horizon), bool),
    }
    for i in range(warmup):
        policy.sample_actions(observation, i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        policy.sample_actions(observation, warmup + i)  # returns numpy: synchronous
        times.append(time.perf_counter() - start)
    return float(np.min(times) * 1e3)


def _dataset_actions(dataset_dir: str):
    """Every demonstrated action [N, A] (raw units) of an RLDS dataset."""
    import numpy as np  # noqa: PLC0415

    from action_gen.data import rlds  # noqa: PLC0415 - TensorFlow, eval mode only

    episodes = rlds.load_rlds_episodes(dataset_dir, decode_images=False)
    return np.concatenate([np.asarray(e["action"]) for e in episodes.as_numpy_iterator()])


# ---------------------------------------------------------------------------- main


def main(argv):
    FLAGS = flags.FLAGS  # noqa: N806 - absl's conventional name
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.parallel < 1:  # before any work (the dataset step)
        raise cli.UserError(f"--parallel must be >= 1, got {FLAGS.parallel}")
    if FLAGS.eval_checkpoint:
        evaluate_run(FLAGS.config, FLAGS.workdir, FLAGS.eval_checkpoint)
        return
    config_path, arg = split_config_flag(_config_flag_value(sys.argv[1:]))
    workdir = os.path.abspath(FLAGS.workdir)
    runs = load_sweep(config_path, arg)
    sweep_plan = plan(config_path, arg, runs, workdir)
    write_command_files(sweep_plan)
    data_cmd = dataset_command(config_path, arg, sweep_plan["dataset_dir"])
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump({"config": config_path, "arg": arg, "runs": runs, **sweep_plan}, f, indent=2)
    if FLAGS.emit:
        submit = emit_job_scripts(sweep_plan, workdir, FLAGS.emit, data_cmd)
        print(f"wrote job scripts; submit with: bash {submit}")
        return
    if FLAGS.dry_run:
        print(f"wrote {len(sweep_plan['evals'])} runs' command.sh under {workdir}")
        return
    start = time.perf_counter()
    if data_cmd:
        job = {"name": "dataset", "dir": sweep_plan["dataset_dir"] + "_log", "command": data_cmd}
        if run_jobs([job], 1)["dataset"]:
            raise RuntimeError(f"dataset generation failed; see {job['dir']}/log.txt")
    # Trainings first in the queue; each evaluation waits for its own training only.
    jobs = [dict(t, key=f"train/{t['name']}") for t in sweep_plan["trains"]]
    jobs += [dict(e, after=f"train/{e['train_group']}") for e in sweep_plan["evals"]]
    run_jobs(jobs, FLAGS.parallel)
    rows = collect_results(workdir, sweep_plan)
    print(markdown_table(rows))
    print(f"sweep wall time {time.perf_counter() - start:.0f} s; tables in {workdir}/results.md")


def _config_flag_value(argv: list[str]) -> str:
    """The value of --config (path[:arg]) as given on the command line."""
    for i, token in enumerate(argv):
        if token.startswith("--config="):
            return token[len("--config=") :]
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    raise app.UsageError("--config=path[:arg] is required")


def define_flags() -> None:
    """Command-line flags; defined only when run as a program, so importing this module
    (tests do) adds nothing to another program's flags."""
    config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
    flags.DEFINE_string("workdir", None, "Sweep directory (or a run dir in eval mode).")
    flags.DEFINE_integer("parallel", 1, "Local jobs at a time.")
    flags.DEFINE_enum("emit", None, ["slurm", "tpu"], "Write job scripts instead of running.")
    flags.DEFINE_bool("dry_run", False, "Write the command files only.")
    flags.DEFINE_string(
        "eval_checkpoint", None, "Eval mode: evaluate --config with this run's trained params."
    )
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    define_flags()
    cli.absl_main(main, __doc__)
