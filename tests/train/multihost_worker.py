"""One process of the 2-process localhost test (`test_multihost.py`); not a test itself.

  python tests/train/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Joins `jax.distributed` on localhost (2 fake CPU devices per process, gloo collectives),
trains the runlocal U-Net 5 steps on a (data=2, fsdp=2) mesh from only this process's rows
of each global batch, then trains the real loop (RLDS shard of this process, collective
orbax checkpoint). Process 0 writes the final params to OUT_DIR/params.npz.
Run only as a script: it sets XLA_FLAGS before importing jax (never import it from tests).
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
# 2 fake devices; other flags the test passes (its compile-speed flags) are kept.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from action_gen import main as cli  # noqa: E402
from action_gen.train import distributed, loop, sharding  # noqa: E402
from tests.train import scale_helpers  # noqa: E402

NUM_STEPS, GLOBAL_BATCH = scale_helpers.MULTIHOST_STEPS, scale_helpers.MULTIHOST_BATCH


def main(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    assert distributed.initialize_from_env(f"localhost:{port}", num_processes, process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    mesh = Mesh(np.asarray(jax.devices()).reshape(num_processes, 2), sharding.MESH_AXES)
    config = scale_helpers.make_config(num_steps=NUM_STEPS)
    batches = scale_helpers.synthetic_batches(config, NUM_STEPS, GLOBAL_BATCH)
    rows = GLOBAL_BATCH // num_processes  # this process's disjoint slice of every batch
    local = [
        {k: v[process_id * rows : (process_id + 1) * rows] for k, v in b.items()} for b in batches
    ]
    _, state = scale_helpers.train(config, mesh, local)
    params = scale_helpers.to_numpy(state.params)  # collective: every process calls it

    # The real loop: each process reads its shard of the RLDS episodes.
    loop_config = scale_helpers.make_config(num_steps=2)
    loop_config.data.dataset_dir = os.path.join(out_dir, "dataset")
    loop_config.train.checkpoint_every = 1
    loop_config.train.log_every = 1
    loop_config.mesh.data, loop_config.mesh.fsdp = num_processes, 2
    cli.collect_data(loop_config, os.path.join(out_dir, "run"))  # process 0 writes, then all
    final = loop.train(loop_config, os.path.join(out_dir, "run"))
    assert int(final.step) == 2
    if process_id == 0:
        flat = {
            jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        np.savez(os.path.join(out_dir, "params.npz"), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
