"""π0 chunk latency: 3 cameras, 48 text tokens, H=50, 10 Euler steps, batch 1.

  .venv/bin/python benchmarks/pi0_latency.py --variant tiny            # CPU
  python benchmarks/pi0_latency.py --variant pi0 --dtype bfloat16      # accelerator

Times, as medians over --runs after a warm-up (compilation) call:
  chunk_ms    the whole chunk: `flow.sample` under one jit (prefix KV cache computed once,
              then a `lax.scan` of 10 expert-only steps over the cached prefix);
  prefix_ms   `prepare` alone: 3 ViT passes + the backbone over images and text;
  step_ms     one `apply_with_context` (the expert over state + 50 action tokens);
  uncached_chunk_ms  the same chunk re-running the prefix every step (what caching saves);
  policy_chunk_ms    the chunk through `sample.policy.Policy.sample_actions` (raw numpy
              observation in, tokenized prompt, normalization, numpy chunk out);
and once each: init_s (parameter init, compilation included), compile_s (the chunk
program). Parameters are random (nothing is downloaded); latency does not depend on their
values. Prints one JSON object. `build`, `benchmark` and `policy_benchmark` are also the
π0 section of benchmarks/gpu_suite.py.
"""

import argparse
import dataclasses
import functools
import json
import time

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


@dataclasses.dataclass
class Built:
    """A π0 of one size with random parameters, and its benchmark observation."""

    variant: str
    dtype: str
    model: pi0.Pi0
    params: dict
    obs: dict
    init_s: float  # compile and run
    init_compile_s: float


def build(variant: str, dtype: str, batch: int) -> Built:
    """Initializes π0 `variant`, timed: `init_s` in all, `init_compile_s` of it compiling
    (on an H200 the 3.24 B-parameter init took 116 s in all, 4.5x the chunk's compile)."""
    model = pi0.Pi0(variant=variant, action_dim=A, dtype=dtype)
    obs = observation(pi0.SIZES[variant].image_size, batch)
    init = jax.jit(functools.partial(models.init_params, model, action_shape=(H, A)))
    tic = time.perf_counter()
    compiled = init.lower(jax.random.key(0), obs).compile()
    compile_s = time.perf_counter() - tic
    params = jax.block_until_ready(compiled(jax.random.key(0), obs))
    return Built(variant, dtype, model, params, obs, time.perf_counter() - tic, compile_s)


def benchmark(
    variant: str, dtype: str, batch: int, runs: int, *, built: Built | None = None,
    uncached: bool = True, on_figure=None,
) -> dict:  # fmt: skip
    """chunk / prefix / step (/ uncached chunk) latency, init and compile seconds;
    `on_figure(name, value)`, if given, hears each figure as soon as it is measured."""
    built = built or build(variant, dtype, batch)
    model, params, obs = built.model, built.params, built.obs
    result = {}

    def put(key, value):
        result[key] = value
        if on_figure is not None:
            on_figure(key, value)

    put("params", int(sum(x.size for x in jax.tree.leaves(params))))
    put("init_s", round(built.init_s, 2))
    put("init_compile_s", round(built.init_compile_s, 2))
    context_apply = models.make_apply_fn(model)
    plain_apply = models.make_uncached_apply_fn(model)

    def chunk_fn(apply_fn):
        return jax.jit(
            functools.partial(flow.sample, apply_fn, num_steps=NUM_STEPS, action_shape=(H, A))
        )

    tic = time.perf_counter()
    cached = chunk_fn(context_apply).lower(params, obs, jax.random.key(0)).compile()
    put("compile_s", round(time.perf_counter() - tic, 2))
    put("chunk_ms", round(median_ms(lambda i: cached(params, obs, jax.random.key(i)), runs), 3))
    prepare = jax.jit(context_apply.prepare)
    step = jax.jit(context_apply.apply)
    context = prepare(params, obs)
    x = jnp.zeros((batch, H, A), jnp.float32)
    t = jnp.full((batch,), 50.0)
    put("prefix_ms", round(median_ms(lambda i: prepare(params, obs), runs), 3))
    put("step_ms", round(median_ms(lambda i: step(params, context, x + i, t), runs), 3))
    if uncached:
        sample = chunk_fn(plain_apply)
        put(
            "uncached_chunk_ms",
            round(median_ms(lambda i: sample(params, obs, jax.random.key(i)), runs), 3),
        )
    return result


def policy_config(variant: str, dtype: str):
    """A flow-π0 run config whose model and observation are `build`'s: 3 cameras at the
    variant's image size, one state step of 32 dims, 48 prompt tokens, H = 50."""
    from configs import flow_pi0_obstacle

    config = flow_pi0_obstacle.get_config("smoke")
    size = pi0.SIZES[variant].image_size
    config.model.variant, config.model.dtype = variant, dtype
    config.model.vocab_size = None  # the variant's own table, as `build`
    config.data.obs_horizon = 1
    config.data.action_horizon = H
    config.data.cameras = {cam: [size, size] for cam in CAMERAS}
    config.data.prompt_max_len = TEXT_TOKENS
    config.objective.num_sample_steps = NUM_STEPS
    return config


def policy_benchmark(built: Built, runs: int, batch: int = 1) -> dict:
    """The chunk through `Policy.sample_actions` (raw observation in, numpy chunk out) with
    `built`'s parameters: policy_compile_s (first call) and policy_chunk_ms."""
    from action_gen.sample.policy import Policy

    def stats(dim):
        ones = [1.0] * dim
        return {"min": [-1.0] * dim, "max": ones, "mean": [0.0] * dim, "std": ones,
                "q01": [-1.0] * dim, "q99": ones, "count": 1}  # fmt: skip

    policy = Policy(
        policy_config(built.variant, built.dtype),
        built.params,
        {"state": stats(STATE_DIM), "actions": stats(A)},
    )
    raw = {k: v for k, v in built.obs.items() if k.startswith("observation/")}
    raw[schema.PROMPT] = np.array(["pick up the red cup and put it in the sink"] * batch)
    tic = time.perf_counter()
    policy.sample_actions(raw, 0)
    compile_s = time.perf_counter() - tic
    return {
        "policy_compile_s": round(compile_s, 2),
        "policy_chunk_ms": round(median_ms(lambda i: policy.sample_actions(raw, i), runs), 3),
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
    built = build(args.variant, args.dtype, args.batch)
    report.update(benchmark(args.variant, args.dtype, args.batch, args.runs, built=built))
    report.update(policy_benchmark(built, args.runs, args.batch))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
