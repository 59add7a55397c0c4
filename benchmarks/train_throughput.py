"""Training throughput of the low-dim U-Net (DP's full size) in samples/s, printed as JSON.

Times the real jitted train step (diffusion objective, AdamW, EMA, sharded over a
(data=-1, fsdp=1) mesh) at batch 256, for each device count and compute dtype, each in
its own subprocess so the fake CPU device count (XLA_FLAGS) can differ:

  python benchmarks/train_throughput.py                       # CPU: 1 vs 8 devices, fp32
  python benchmarks/train_throughput.py --dtypes=float32,bfloat16 --steps=5
  python benchmarks/train_throughput.py --platform=gpu --device_counts=1 \
      --dtypes=float32,bfloat16 --steps=50                    # a GPU machine

Fake CPU devices share the host's cores, so 8 of them measure partitioning overhead,
not a speed-up; on a multi-GPU host --device_counts=1,8 compares real devices. Output:
one JSON object per line per configuration, then a JSON list of all of them.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args) -> dict:
    """Runs in the child: compile, warm up, then time `args.steps` steps."""
    import jax
    import numpy as np

    sys.path.insert(0, REPO)
    from timing import device_report  # benchmarks/timing.py

    from action_gen.data import schema, spec
    from action_gen.train import sharding
    from action_gen.train.program import build_train_program
    from configs import diffusion_unet_obstacle

    config = diffusion_unet_obstacle.get_config()  # DP sizes: down_dims (256, 512, 1024)
    config.data.batch_size = args.batch_size
    config.train.compute_dtype = args.dtype
    horizon, obs_horizon = config.data.action_horizon, config.data.obs_horizon
    action_shape = (horizon, args.action_dim)
    mesh = sharding.create_mesh(config.mesh)
    example = spec.example_observation(spec.observation_spec(config.data, args.state_dim))
    program = build_train_program(config, mesh, example, action_shape)  # the loop's own
    step, batch_sharding = program.step_fn, program.batch_sharding
    state = program.init_fn(jax.random.key(0))
    rng = np.random.default_rng(0)
    b = args.batch_size
    batch = sharding.global_batch(
        {
            schema.OBS_STATE: rng.normal(size=(b, obs_horizon, args.state_dim)).astype("f4"),
            schema.OBS_PAD_MASK: np.ones((b, obs_horizon), bool),
            schema.ACTIONS: rng.uniform(-1, 1, (b, *action_shape)).astype("f4"),
            schema.ACTION_PAD_MASK: np.ones((b, horizon), bool),
        },
        batch_sharding,
    )
    key = jax.random.key(1)
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
    return {
        "model": "unet1d (256, 512, 1024), low-dim",
        **device_report(),
        "dtype": args.dtype,
        "batch_size": b,
        "steps": args.steps,
        "step_ms": 1e3 * elapsed / args.steps,
        "samples_per_s": b * args.steps / elapsed,
        "compile_s": compile_s,
        "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "loss": float(metrics["loss"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
    parser.add_argument("--device_counts", default="1,8", help="CPU: fake device counts")
    parser.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--state_dim", type=int, default=20)  # DP's PushT low-dim obs
    parser.add_argument("--action_dim", type=int, default=2)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()

    if args.dtype is not None:  # child: one configuration
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return

    results = []
    for count in [int(c) for c in args.device_counts.split(",")]:
        for dtype in args.dtypes.split(","):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            if args.platform == "cpu":
                env.update(
                    JAX_PLATFORMS="cpu",
                    XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
                )
            elif args.platform == "gpu":
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
            cmd = [sys.executable, os.path.abspath(__file__), f"--dtype={dtype}"]
            cmd += [
                f"--{k}={getattr(args, k)}"
                for k in ("batch_size", "steps", "warmup", "state_dim", "action_dim")
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                raise RuntimeError(f"{count} devices, {dtype} failed:\n{out.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT ") :])
            print(json.dumps(result), flush=True)
            results.append(result)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
