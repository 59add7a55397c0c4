"""Per-chunk latency of the scanned diffusion sampler vs a Python loop of jitted steps.

  .venv/bin/python benchmarks/sampler.py [--runs 10] [--models dp,tiny] [--batch 1]

Scanned: `diffusion.sample` under one `jax.jit` (the whole chain is one XLA program).
Loop: what PyTorch-style code does: one jitted denoising step (model + DDIM/DDPM update)
called from Python num_steps times, the per-step constants passed in as arguments, and a
single `block_until_ready` at the end (dispatch stays asynchronous).
Model: DP's Push-T low-dim U-Net (down_dims (256, 512, 1024), kernel 5, embed 256, obs
T=2 x S=20, H=16, A=2) and, to show the dispatch-bound regime, the tiny variant.
Prints one JSON object; latencies are medians over --runs after a warm-up call.
"""

import argparse
import functools
import json

import jax
import jax.numpy as jnp
from timing import device_report, median_ms  # benchmarks/timing.py

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import diffusion

MODEL_CONFIGS = {
    "dp": {
        "name": "unet1d",
        "down_dims": (256, 512, 1024),
        "kernel_size": 5,
        "time_embed_dim": 256,
    },
    "tiny": {"name": "unet1d", "down_dims": (16, 32), "kernel_size": 5, "time_embed_dim": 16},
}
T, S, H, A = 2, 20, 16, 2
NUM_TRAIN_STEPS = 100
SAMPLERS = (("ddim", 10), ("ddpm", 100))


def _step_fn(apply_fn, sampler: str):
    update = diffusion.ddpm_step if sampler == "ddpm" else diffusion.ddim_step

    @jax.jit
    def step(params, obs, x, k, alpha_bar, alpha_bar_prev, noise):
        t = jnp.full((x.shape[0],), k, jnp.float32)
        return update(x, apply_fn(params, obs, x, t), alpha_bar, alpha_bar_prev, noise)

    return step


def _time_sampler(apply_fn, params, obs, sampler: str, num_steps: int, runs: int):
    """(scanned ms, Python-loop ms) per chunk."""
    batch = obs[schema.OBS_STATE].shape[0]
    scanned = jax.jit(
        functools.partial(
            diffusion.sample,
            apply_fn,
            num_steps=num_steps,
            action_shape=(H, A),
            sampler=sampler,
            num_train_steps=NUM_TRAIN_STEPS,
        )
    )
    scan_ms = median_ms(lambda i: scanned(params, obs, jax.random.key(i)), runs)

    step = _step_fn(apply_fn, sampler)
    ks, alpha_bars, alpha_bars_prev = diffusion.sampler_constants(NUM_TRAIN_STEPS, num_steps)
    draw = jax.jit(
        functools.partial(
            diffusion.initial_noise,
            batch_size=batch,
            action_shape=(H, A),
            num_steps=num_steps,
            stochastic=True,
        )
    )

    def loop(i):
        x, noise = draw(jax.random.key(i))
        for n in range(num_steps):
            x = step(params, obs, x, ks[n], alpha_bars[n], alpha_bars_prev[n], noise[n])
        return x

    return scan_ms, median_ms(loop, runs)


def benchmark(model_name: str, batch: int, runs: int) -> dict:
    model = models.create_model(MODEL_CONFIGS[model_name])
    obs = models.example_observation(T, S, batch)
    obs[schema.OBS_STATE] = jax.random.normal(jax.random.key(1), (batch, T, S))
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    apply_fn = models.make_apply_fn(model)
    num_params = sum(x.size for x in jax.tree.leaves(params))

    # One forward pass, for scale.
    forward = jax.jit(apply_fn)
    x0 = jnp.zeros((batch, H, A))
    t0 = jnp.zeros((batch,))
    forward_ms = median_ms(lambda i: forward(params, obs, x0 + i, t0), runs)

    results = {"params": int(num_params), "forward_ms": round(forward_ms, 3)}
    for sampler, num_steps in SAMPLERS:
        scan_ms, loop_ms = _time_sampler(apply_fn, params, obs, sampler, num_steps, runs)
        results[f"{sampler}{num_steps}"] = {
            "scan_ms": round(scan_ms, 3),
            "loop_ms": round(loop_ms, 3),
            "speedup": round(loop_ms / scan_ms, 2),
            "scan_ms_per_step": round(scan_ms / num_steps, 3),
            "loop_overhead_ms_per_step": round((loop_ms - scan_ms) / num_steps, 3),
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", default="dp,tiny")
    args = parser.parse_args()
    report = {
        **device_report(),
        "batch": args.batch,
        "runs": args.runs,
        "shapes": {"T": T, "S": S, "H": H, "A": A, "K": NUM_TRAIN_STEPS},
    }
    for name in args.models.split(","):
        report[name] = benchmark(name, args.batch, args.runs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
