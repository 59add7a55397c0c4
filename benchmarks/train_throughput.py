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
`measure` is also the training section of benchmarks/gpu_suite.py (in-process, with
config overrides for the speed switches: the U-Net's bf16 body, remat, batch size).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from action_gen import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(
    *,
    batch_size: int = 256,
    dtype: str = "float32",
    steps: int = 3,
    warmup: int = 1,
    state_dim: int = 20,
    action_dim: int = 2,
    config_arg: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Compile, warm up, then time `steps` train steps of the low-dim diffusion U-Net.

    Args:
      batch_size, dtype: `data.batch_size` and `train.compute_dtype`.
      steps, warmup: timed and untimed steps after the compiling one.
      state_dim, action_dim: S and A of the random batch (DP Push-T low-dim: 20, 2).
      config_arg: the config variant (None: DP's sizes; "runlocal": tiny, for tests).
      overrides: {"section.field": value} set on the config last (e.g.
        {"model.float32_body": False, "train.remat": "dots"}).
    Returns:
      The figures (step_ms, samples_per_s, compile_s, ...) with the device report.
    """
    import jax
    import numpy as np

    sys.path.insert(0, REPO)
    from timing import device_report  # benchmarks/timing.py

    from action_gen.data import schema, spec
    from action_gen.train import sharding
    from action_gen.train.program import build_train_program
    from configs import diffusion_unet_obstacle

    config = diffusion_unet_obstacle.get_config(config_arg)  # DP sizes: (256, 512, 1024)
    config.data.batch_size = batch_size
    config.train.compute_dtype = dtype
    for dotted, value in (overrides or {}).items():
        section, field = dotted.split(".")
        config[section][field] = value
    horizon, obs_horizon = config.data.action_horizon, config.data.obs_horizon
    action_shape = (horizon, action_dim)
    mesh = sharding.create_mesh(config.mesh)
    example = spec.example_observation(spec.observation_spec(config.data, state_dim))
    program = build_train_program(config, mesh, example, action_shape)  # the loop's own
    step, batch_sharding = program.step_fn, program.batch_sharding
    state = program.init_fn(jax.random.key(0))
    rng = np.random.default_rng(0)
    b = batch_size
    batch = sharding.global_batch(
        {
            schema.OBS_STATE: rng.normal(size=(b, obs_horizon, state_dim)).astype("f4"),
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
    for _ in range(warmup):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
    return {
        "model": f"unet1d {tuple(config.model.down_dims)}, low-dim",
        **device_report(),
        "dtype": dtype,
        "batch_size": b,
        "overrides": dict(overrides or {}),
        "steps": steps,
        "step_ms": 1e3 * elapsed / steps,
        "samples_per_s": b * steps / elapsed,
        "compile_s": compile_s,
        "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "loss": float(metrics["loss"]),
    }


def main():
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
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
        keys = ("batch_size", "dtype", "steps", "warmup", "state_dim", "action_dim")
        print("RESULT " + json.dumps(measure(**{k: getattr(args, k) for k in keys})), flush=True)
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
    cli.quiet_logs()
    cli.run_command(main)
