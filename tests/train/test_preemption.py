"""Preemption safety: SIGKILL at random points 5 times and SIGTERM once, resume each time,
and end with exactly the parameters of an uninterrupted run; every checkpoint readable."""

import os
import random
import re
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from benchmarks.checkpoint_kill_stress import train_command, train_env, visible_steps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 20
RESUMED = re.compile(r"Resumed from \S+ at step (\d+)")


def _command(workdir, dataset_dir):
    return train_command(workdir, dataset_dir, NUM_STEPS)


def _read_params(ckpt_dir, step) -> dict:
    """Reads a step's state (params) and data position; fails if anything is unreadable."""
    state = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt_dir, str(step), "state"))
    data = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        os.path.join(ckpt_dir, str(step), "data")
    )
    assert int(np.asarray(state["step"])) == step == data["batches_consumed"]
    return state["params"]


def _assert_all_readable(ckpt_dir):
    for step in visible_steps(ckpt_dir):
        _read_params(ckpt_dir, step)


def _launch(workdir, dataset_dir, env, log_path):
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller after the process ends
    proc = subprocess.Popen(
        _command(workdir, dataset_dir), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return proc, log


def _wait_for_progress(proc, ckpt_dir, after: int, timeout: float = 240.0) -> None:
    """Until a checkpoint newer than `after` is finalised (the loop is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = visible_steps(ckpt_dir)
        if steps and steps[-1] > after:
            return
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        time.sleep(0.05)
    raise TimeoutError("training made no progress")


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    env = train_env(tmp_path / "jax_cache")
    dataset_dir = tmp_path / "dataset"

    # Uninterrupted reference (also writes the dataset and fills the compilation cache).
    ref_dir = tmp_path / "reference"
    proc, log = _launch(ref_dir, dataset_dir, env, tmp_path / "reference.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    log.close()
    reference = _flat(_read_params(ref_dir / "checkpoints", NUM_STEPS))

    workdir, rng = tmp_path / "interrupted", random.Random(0)
    ckpt_dir = workdir / "checkpoints"
    last = 0  # the latest finalised checkpoint before each launch
    for attempt, sig in enumerate([signal.SIGKILL] * 5 + [signal.SIGTERM] + [None]):
        log_path = tmp_path / f"attempt{attempt}.log"
        proc, log = _launch(workdir, dataset_dir, env, log_path)
        if sig is None:
            assert proc.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        else:
            _wait_for_progress(proc, ckpt_dir, after=last)
            time.sleep(rng.uniform(0.0, 0.4))  # a random point inside the step/save cycle
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
            if sig == signal.SIGTERM:
                # Graceful: the current step finishes, is saved, the write completes.
                assert code == 0, log_path.read_text()[-3000:]
                assert "Preempted: saved step" in log_path.read_text()
            else:
                assert code == -signal.SIGKILL
        log.close()
        text = log_path.read_text()
        if last:
            match = RESUMED.search(text)
            assert match and int(match.group(1)) == last, text[-3000:]
        else:
            assert RESUMED.search(text) is None
        _assert_all_readable(ckpt_dir)
        steps = visible_steps(ckpt_dir)
        assert steps and steps[-1] >= last
        if sig == signal.SIGTERM:
            assert steps[-1] > last and steps[-1] < NUM_STEPS
        last = steps[-1]

    assert last == NUM_STEPS
    final = _flat(_read_params(ckpt_dir, NUM_STEPS))
    assert final.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(final[key], value, err_msg=key)
