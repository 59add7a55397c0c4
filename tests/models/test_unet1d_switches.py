"""The U-Net's speed switch `float32_body=False` (the body in the caller's dtype) computes
the same function: exactly in float32 and, within bf16 rounding, in bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema
from action_gen.train.step import cast_floats, wrap_apply_fn

TINY = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}


def _inputs(seed: int, batch: int = 3, horizon: int = 8, state_dim: int = 5):
    keys = jax.random.split(jax.random.key(seed), 3)
    obs = {
        schema.OBS_STATE: jax.random.normal(keys[0], (batch, 2, state_dim)),
        schema.OBS_PAD_MASK: jnp.ones((batch, 2), bool),
    }
    x = jax.random.normal(keys[1], (batch, horizon, 2))
    t = jax.random.uniform(keys[2], (batch,), minval=0, maxval=100)
    return obs, x, t


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _model_and_params(seed: int, **fields):
    model = models.create_model({**TINY, **fields})
    obs, x, _ = _inputs(seed)
    params = models.init_params(model, jax.random.key(seed), obs, x.shape[1:])
    # Nonzero biases and GroupNorm offsets, so every parameter takes part.
    noise = jax.random.split(jax.random.key(seed + 100), len(jax.tree.leaves(params)))
    leaves, tree = jax.tree.flatten(params)
    leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise, strict=True)]
    return model, jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_body_is_the_float32_function_within_bf16_rounding(seed):
    ref, params = _model_and_params(seed)
    obs, x, t = _inputs(seed + 20)
    want = jax.jit(models.make_apply_fn(ref))(params, obs, x, t)

    body = models.create_model({**TINY, "float32_body": False})
    # In float32 the switch changes nothing.
    same = jax.jit(models.make_apply_fn(body))(params, obs, x, t)
    np.testing.assert_allclose(same, want, rtol=1e-6, atol=1e-6)

    # bf16 parameters cast once, bf16 inputs: the body runs in bf16 ...
    raw = jax.jit(models.make_apply_fn(body))(
        cast_floats(params, jnp.bfloat16), cast_floats(obs, jnp.bfloat16), x.astype(jnp.bfloat16), t
    )
    assert raw.dtype == jnp.bfloat16
    # ... and computes the same function to bf16 accuracy (8 mantissa bits per op).
    apply_bf16 = wrap_apply_fn(models.make_apply_fn(body), compute_dtype="bfloat16")
    got = jax.jit(apply_bf16)(cast_floats(params, jnp.bfloat16), obs, x, t)
    assert got.dtype == jnp.float32
    assert _rel(got, want) < 3e-2

    # The default keeps a float32 body even under bf16 parameters (the earlier behaviour).
    kept = jax.jit(models.make_apply_fn(ref))(
        cast_floats(params, jnp.bfloat16), obs, x.astype(jnp.bfloat16), t
    )
    assert kept.dtype == jnp.float32
