"""Checkpoint kill stress: SIGKILL training at random points many times, and after every
kill read every step directory orbax would list, as a resume or an evaluation would.

  .venv/bin/python benchmarks/checkpoint_kill_stress.py --kills 50

Each launch is `python -m action_gen.main --mode=train` on the small runlocal config with a
checkpoint every step, keep-last-3 and async writes (as tests/train/test_preemption.py), so
kills land inside steps, inside async writes, inside finalisation and inside the keep-last-K
deletion of the oldest step. A launch is killed `uniform(0, --max_delay)` seconds after a
step newer than the previous launch's last one is finalised; relaunches reuse a JAX
compilation cache so they are fast. A run that reaches its last step starts a new workdir.

After each kill every directory with a step name (`<digits>`) is restored in full (state
via orbax's PyTreeCheckpointer, as the preemption test does, and the JSON items); one that
fails is an unreadable step. Each launch's "Resumed from ... at step N" is compared with
the newest step that was readable before it. Prints one JSON object: kills, unreadable
steps found (distinct directories, with the files each one had), resume mismatches, failed
launches, damaged steps that a manager start moved aside, wall time and the machine.
"""

import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings

from action_gen import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESUMED = re.compile(r"Resumed from \S+ at step (\d+)")
MOVED_ASIDE = re.compile(r"damaged checkpoint step (\d+)")
HASH = re.compile(r"[0-9a-f]{32}")


def train_command(workdir, dataset_dir, num_steps):
    """The training command that is killed (also tests/train/test_preemption.py's)."""
    return [
        sys.executable,
        "-m",
        "action_gen.main",
        "--config=configs/diffusion_unet_obstacle.py:runlocal",
        f"--workdir={workdir}",
        "--mode=train",
        f"--config.data.dataset_dir={dataset_dir}",
        f"--config.train.num_steps={num_steps}",
        "--config.train.checkpoint_every=1",
        "--config.train.log_every=5",
        "--config.train.keep_checkpoints=3",
        "--config.train.async_checkpoints=True",
    ]


def train_env(cache_dir):
    """One CPU device; every relaunch reuses the first launch's compiled programs."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def visible_steps(ckpt_dir) -> list[int]:
    """The directories orbax lists as steps (unfinished writes carry a tmp suffix)."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(name) for name in os.listdir(ckpt_dir) if name.isdigit())


def _read(step_dir) -> None:
    """Restores everything in a step directory; raises if anything is unreadable."""
    import orbax.checkpoint as ocp  # noqa: PLC0415 - after the parse, not at import

    ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"))
    for item in ("config", "norm_stats", "data"):
        ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, item))


def _files(step_dir) -> list[str]:
    """Relative paths of the files in a step directory (content hashes shown as `*`)."""
    found = set()
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            found.add(HASH.sub("*", rel))
    return sorted(found)


def _wait_for_step(proc, ckpt_dir, after: int, timeout: float) -> bool:
    """True once a step newer than `after` is listed; False if training exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = visible_steps(ckpt_dir)
        if steps and steps[-1] > after:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint newer than step {after} in {timeout}s")


def _machine() -> dict:
    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
    }


def main():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--max_delay", type=float, default=0.4, help="seconds after a step")
    parser.add_argument("--num_steps", type=int, default=200, help="per run (then a new run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="work directory (default: a tmp dir)")
    args = parser.parse_args()

    import orbax.checkpoint as ocp  # noqa: PLC0415 - keeps --help fast

    # Reading without target shardings is what we mean to do (one CPU device).
    warnings.filterwarnings("ignore", message="Sharding info not provided")

    root = args.root or tempfile.mkdtemp(prefix="ckpt_kill_stress_")
    os.makedirs(root, exist_ok=True)
    env, rng = train_env(os.path.join(root, "jax_cache")), random.Random(args.seed)
    dataset_dir = os.path.join(root, "dataset")
    start = time.perf_counter()
    run, kills, launches, failed_launches, moved_aside = 0, 0, 0, 0, 0
    unreadable: dict[str, dict] = {}  # keyed by directory + inode: one entry per directory
    kills_with_unreadable, resume_mismatches = 0, []
    newest_readable = 0
    while kills < args.kills:
        workdir = os.path.join(root, f"run{run}")
        ckpt_dir = os.path.join(workdir, "checkpoints")
        log_path = os.path.join(root, f"launch{launches}.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                train_command(workdir, dataset_dir, args.num_steps),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            launches += 1
            last = visible_steps(ckpt_dir)[-1] if visible_steps(ckpt_dir) else 0
            if _wait_for_step(proc, ckpt_dir, after=last, timeout=600):
                time.sleep(rng.uniform(0.0, args.max_delay))
                proc.send_signal(signal.SIGKILL)
            code = proc.wait(timeout=120)
        text = open(log_path).read()
        moved_aside += len(MOVED_ASIDE.findall(text))
        match = RESUMED.search(text)
        resumed_at = int(match.group(1)) if match else 0
        if resumed_at != newest_readable:
            resume_mismatches.append(
                {"launch": launches - 1, "expected": newest_readable, "resumed": resumed_at}
            )
        if code == -signal.SIGKILL:
            kills += 1
        elif code != 0:
            failed_launches += 1
            print(f"launch {launches - 1} failed ({code}):\n{text[-2000:]}", file=sys.stderr)

        bad_now, newest_readable = False, 0
        for step in visible_steps(ckpt_dir):
            step_dir = os.path.join(ckpt_dir, str(step))
            try:
                _read(step_dir)
                newest_readable = step
            except Exception as e:  # noqa: BLE001 - any failure to read is what we count
                bad_now = True
                key = f"{step_dir}@{os.stat(step_dir).st_ino}"
                unreadable.setdefault(
                    key,
                    {
                        "step": step,
                        "after_kill": kills,
                        "error": str(e).strip().splitlines()[0][:200],
                        "files": _files(step_dir),
                    },
                )
        kills_with_unreadable += bad_now
        if code == 0 or failed_launches > 3 * args.kills:  # run finished: start a new one
            run, newest_readable = run + 1, 0
        print(
            f"kill {kills}/{args.kills}: steps {visible_steps(ckpt_dir)}, "
            f"unreadable so far {len(unreadable)}",
            file=sys.stderr,
            flush=True,
        )

    result = {
        "kills": kills,
        "launches": launches,
        "unreadable_steps": len(unreadable),
        "kills_followed_by_unreadable_step": kills_with_unreadable,
        "resume_mismatches": resume_mismatches,
        "failed_launches": failed_launches,
        "damaged_steps_moved_aside": moved_aside,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": _machine(),
        "orbax_checkpoint": ocp.__version__,
        "max_delay_s": args.max_delay,
        "seed": args.seed,
        "unreadable": list(unreadable.values())[:10],
        "root": root,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
