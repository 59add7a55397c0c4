"""π0 chunk latency: 3 cameras, 48 text tokens, H=50, 10 Euler steps, batch 1.

  .venv/bin/python benchmarks/pi0_latency.py --variant tiny            # CPU
  python benchmarks/pi0_latency.py --variant pi0 --dtype bfloat16      # accelerator

Times, as medians over --runs after a warm-up (compilation) call:
  chunk_ms    the whole chunk: `flow.sample` under one jit (prefix KV cache computed once,
              then a `lax.scan` of 10 expert-only steps over the cached prefix);
  prefix_ms   `prepare` alone: 3 ViT passes + the backbone over images and text;
  step_ms     one `apply_with_context` (the expert over state + 50 action tokens);
  uncached_chunk_ms  the same chunk re-running the prefix every step (what caching saves).
Parameters are random (nothing is downloaded); latency does not depend on their values.
Prints one JSON object.
"""

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from timing import device_report, median_ms  # benchmarks/timing.py

from action_gen import models
from action_gen.data import schema, tokenizer
from action_gen.models import pi0
from action_gen.objectives import flow

CAMERAS = ("base", "left_wrist", "right_wrist")
TEXT_TOKENS, H, A, STATE_DIM, NUM_STEPS = 48, 50, 32, 32, 10


def observation(size: int, batch: int) -> dict:
    rng = np.random.default_rng(0)
    obs = {schema.OBS_STATE: rng.normal(size=(batch, 1, STATE_DIM)).astype(np.float32)}
    for cam in CAMERAS:
        obs[schema.image_key(cam)] = rng.integers(0, 255, (batch, 1, size, size, 3), np.uint8)
    text = "pick up the red cup and put it in the sink " * 4
    tokens, mask = tokenizer.tokenize([text] * batch, TEXT_TOKENS)
    obs[schema.PROMPT_TOKENS], obs[schema.PROMPT_MASK] = tokens, mask
    return obs


def benchmark(variant: str, dtype: str, batch: int, runs: int) -> dict:
    model = pi0.Pi0(variant=variant, action_dim=A, dtype=dtype)
    obs = observation(pi0.SIZES[variant].image_size, batch)
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    context_apply = models.make_context_apply_fn(model)
    plain_apply = models.make_apply_fn(model)

    def chunk_fn(apply_fn):
        return jax.jit(
            functools.partial(flow.sample, apply_fn, num_steps=NUM_STEPS, action_shape=(H, A))
        )

    cached, uncached = chunk_fn(context_apply), chunk_fn(plain_apply)
    prepare = jax.jit(context_apply.prepare)
    step = jax.jit(context_apply.apply)
    context = prepare(params, obs)
    x = jnp.zeros((batch, H, A), jnp.float32)
    t = jnp.full((batch,), 50.0)
    return {
        "params": int(num_params),
        "chunk_ms": round(median_ms(lambda i: cached(params, obs, jax.random.key(i)), runs), 3),
        "prefix_ms": round(median_ms(lambda i: prepare(params, obs), runs), 3),
        "step_ms": round(median_ms(lambda i: step(params, context, x + i, t), runs), 3),
        "uncached_chunk_ms": round(
            median_ms(lambda i: uncached(params, obs, jax.random.key(i)), runs), 3
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny", choices=sorted(pi0.SIZES))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    report = {
        **device_report(),
        "variant": args.variant,
        "dtype": args.dtype,
        "batch": args.batch,
        "shapes": {
            "cameras": len(CAMERAS),
            "text_tokens": TEXT_TOKENS,
            "H": H,
            "A": A,
            "steps": NUM_STEPS,
        },  # fmt: skip
    }
    report.update(benchmark(args.variant, args.dtype, args.batch, args.runs))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
