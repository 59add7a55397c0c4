"""The U-Net's observation context: `prepare` (image encoder, instruction encoder) once per
chunk, then `apply_with_context` per step, computes what the whole model computes, and the
samplers' loop no longer holds the image encoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import diffusion

TINY = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}
IMAGE = {**TINY, "image_features": 8, "num_keypoints": 4, "resnet_width": 8,
         "resnet_blocks": (1, 1, 1, 1), "image_crop": (20, 20)}  # fmt: skip
H, A = 8, 2


def _obs(kind: str, seed: int, batch: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, 2, 5)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, 2), bool),
    }
    if kind == "image":
        images = rng.integers(0, 256, (batch, 2, 24, 24, 3), dtype=np.uint8)
        obs[schema.image_key("front")] = jnp.asarray(images)
    if kind == "instruction":
        obs[schema.PROMPT_TOKENS] = jnp.asarray(rng.integers(1, 259, (batch, 6)), jnp.int32)
        obs[schema.PROMPT_MASK] = jnp.asarray(np.arange(6) < rng.integers(2, 7, (batch, 1)))
    return obs


@pytest.mark.parametrize("kind", ["lowdim", "image", "instruction"])
def test_context_path_is_the_whole_model(kind):
    model = models.create_model(IMAGE if kind == "image" else TINY)
    obs = _obs(kind, seed=1)
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    split, whole = models.make_apply_fn(model), models.make_uncached_apply_fn(model)
    assert isinstance(split, models.ContextApply)
    x = jax.random.normal(jax.random.key(2), (3, H, A))
    t = jnp.asarray([3.0, 50.0, 99.0])
    context = jax.jit(split.prepare)(params, obs)
    got = jax.jit(split.apply)(params, context, x, t)
    want = jax.jit(whole)(params, obs, x, t)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _sub_jaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def _primitives(jaxpr) -> set[str]:
    """Every primitive in `jaxpr` and the jaxprs nested in its equations (pjit, cond, ...)."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                names |= _primitives(sub)
    return names


def test_image_encoder_runs_once_per_chunk_not_per_step():
    model = models.create_model(IMAGE)
    obs = _obs("image", seed=3)
    params = models.init_params(model, jax.random.key(0), obs, (H, A))

    def scan_body_primitives(apply_fn) -> set[str]:
        sample = functools.partial(
            diffusion.sample, apply_fn, num_steps=4, action_shape=(H, A), num_train_steps=100
        )
        jaxpr = jax.make_jaxpr(sample)(params, obs, jax.random.key(0)).jaxpr
        scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
        assert len(scans) == 1
        return _primitives(scans[0].params["jaxpr"].jaxpr)

    assert "conv_general_dilated" not in scan_body_primitives(models.make_apply_fn(model))
    assert "conv_general_dilated" in scan_body_primitives(models.make_uncached_apply_fn(model))
