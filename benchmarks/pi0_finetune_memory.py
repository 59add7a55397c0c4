"""π0 fine-tuning on one accelerator: the train step's time and peak device memory under full
fine-tuning, LoRA and a frozen backbone (`configs/flow_pi0_obstacle.py` variants).

  python benchmarks/pi0_finetune_memory.py --variant pi0 --batch 8       # one GPU
  .venv/bin/python benchmarks/pi0_finetune_memory.py --quick              # CPU smoke

Each method builds the real training program (`train.program.build_train_program`: the
masked optimizer, gradients of trainable leaves only, EMA of those) at the given size with
openpi's three 224² cameras, bf16 compute (`train.compute_dtype`), synthetic batches, on one
device; prints one JSON line per method as soon as it is measured: trainable parameters,
bytes of the state (params, EMA, optimizer), init / compile seconds, step ms (median of
--steps after the first) and the device's peak bytes in use (where the backend reports it;
each method runs in a fresh process so peaks do not mix).
"""

import argparse
import json
import subprocess
import sys
import time

from action_gen import cli

METHODS = {"full": "", "lora": ",lora", "frozen_backbone": ",frozen_backbone"}


def measure(method: str, variant: str, batch: int, steps: int, remat: str = "none") -> dict:
    import jax
    import numpy as np
    from timing import device_report

    from action_gen.data import schema, spec
    from action_gen.train import lora as train_lora
    from action_gen.train import sharding
    from action_gen.train.program import build_train_program
    from configs import flow_pi0_obstacle

    size = "pi0" if variant == "pi0" else "smoke"
    config = flow_pi0_obstacle.get_config(size + METHODS[method])
    config.model.variant = variant
    config.model.vocab_size = None if variant == "pi0" else 259
    config.model.dtype = "bfloat16"
    config.model.remat = remat  # π0's per-layer remat: none | full | a policy name
    config.train.compute_dtype = "bfloat16"
    config.data.batch_size = batch
    config.data.obs_horizon = 1
    config.data.action_horizon = 50
    image = 224 if variant == "pi0" else 32
    config.data.cameras = {c: [image, image] for c in ("base", "left_wrist", "right_wrist")}
    config.mesh.data, config.mesh.fsdp = 1, 1
    state_dim = 32
    mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
    example = spec.example_observation(spec.observation_spec(config.data, state_dim))
    action_shape = (50, config.model.action_dim)
    tic = time.perf_counter()
    program = build_train_program(config, mesh, example, action_shape)
    state = jax.block_until_ready(program.init_fn(jax.random.key(0)))
    init_s = time.perf_counter() - tic

    rng = np.random.default_rng(0)
    batch_np = {k: np.repeat(np.asarray(v), batch, axis=0) for k, v in example.items()}
    for k, v in batch_np.items():
        if v.dtype == np.uint8:
            batch_np[k] = rng.integers(0, 255, v.shape, np.uint8)
    batch_np[schema.OBS_STATE] = rng.normal(size=batch_np[schema.OBS_STATE].shape).astype(
        np.float32
    )
    batch_np[schema.ACTIONS] = rng.uniform(-1, 1, (batch, *action_shape)).astype(np.float32)
    batch_np[schema.ACTION_PAD_MASK] = np.ones((batch, 50), bool)
    batch_np[schema.ACTION_DIM_MASK] = np.ones((batch, action_shape[1]), bool)
    data = sharding.global_batch(batch_np, program.batch_sharding)
    tic = time.perf_counter()
    step = program.step_fn.lower(state, data, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - tic
    times = []
    for i in range(steps + 1):
        tic = time.perf_counter()
        state, metrics = step(state, data, jax.random.key(i))
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - tic)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        **device_report(),
        "method": method,
        "variant": variant,
        "batch": batch,
        "remat": remat,
        **train_lora.footprint(program.abstract_state, program.trainable),
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        "step_ms": round(1e3 * float(np.median(times[1:])), 2),
        "loss": float(metrics["loss"]),
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    }


def main():
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="pi0")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default="lora,frozen_backbone,full")
    parser.add_argument("--remat", default="none", help="model.remat (none | full | ...)")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--quick", action="store_true", help="CPU smoke: tiny, batch 2")
    args = parser.parse_args()
    if args.quick:
        args.variant, args.batch, args.steps = "tiny", 2, 1
    if args.one:
        figures = measure(args.one, args.variant, args.batch, args.steps, args.remat)
        print(json.dumps(figures), flush=True)
        return
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, f"--one={method}", f"--variant={args.variant}"]
        cmd += [f"--batch={args.batch}", f"--steps={args.steps}", f"--remat={args.remat}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            err = proc.stderr.strip().splitlines()[-1:] or ["?"]
            print(json.dumps({"method": method, "error": err[0][:300]}), flush=True)
        else:
            print(lines[-1], flush=True)


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
