"""Two real processes on localhost (jax.distributed, gloo CPU collectives) train like one."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from action_gen import checkpoint
from action_gen.train import distributed, sharding
from tests.train import scale_helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "train", "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_union(tmp_path):
    port, num = _free_port(), 2
    env = dict(os.environ)  # the worker sets its own device count, keeps the other flags
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env["XLA_FLAGS"])
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), str(num), str(port), str(tmp_path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num)
    ]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {i} failed:\n{out[-4000:]}"

    # Reference: one process, one device, the whole batch of every step.
    config = scale_helpers.make_config(num_steps=scale_helpers.MULTIHOST_STEPS)
    batches = scale_helpers.synthetic_batches(
        config, scale_helpers.MULTIHOST_STEPS, scale_helpers.MULTIHOST_BATCH
    )
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), sharding.MESH_AXES)
    _, state = scale_helpers.train(config, mesh, batches)
    expected = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    got = dict(np.load(tmp_path / "params.npz"))
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=2e-6, err_msg=key)

    # The real loop wrote one collective checkpoint per step, one TensorBoard log.
    manager = checkpoint.create_checkpoint_manager(
        str(tmp_path / "run" / "checkpoints"), read_only=True
    )
    assert manager.all_steps() == [1, 2]
    logs = os.listdir(tmp_path / "run" / "tensorboard")
    assert len(logs) == 1, logs


def test_slurm_nodelist_and_env_detection():
    assert distributed.parse_slurm_nodelist("gpu[08-10,7],login1") == [
        "gpu08",
        "gpu09",
        "gpu10",
        "gpu7",
        "login1",
    ]
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NODELIST": "node[1-4]",
    }
    assert distributed.slurm_settings(env) == ("node1:12345", 4, 3)
    assert distributed.slurm_settings({**env, "SLURM_NTASKS": "1"}) is None
    assert distributed.slurm_settings({}) is None
    assert distributed.tpu_pod_detected({"TPU_WORKER_HOSTNAMES": "t0,t1"})
    assert not distributed.tpu_pod_detected({"TPU_WORKER_HOSTNAMES": "t0"})
    # Single process: nothing to initialise; partial explicit flags are refused.
    assert distributed.initialize_from_env(env={}) is False
    with pytest.raises(ValueError, match="--num_processes"):
        distributed.initialize_from_env("localhost:1", None, 0, env={})
