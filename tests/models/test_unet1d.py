"""The conditional 1-D U-Net and its layers: shapes, parameter counts, conv math."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema
from action_gen.models import layers, unet1d

TINY = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}
DP_LOWDIM = {"name": "unet1d", "down_dims": (256, 512, 1024), "time_embed_dim": 256}


def _obs(batch=3, horizon=2, state_dim=9, seed=0):
    rng = np.random.default_rng(seed)
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, horizon, state_dim)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, horizon), bool),
    }


def _num_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(config, state_dim, action_shape=(16, 2)):
    model = models.create_model(config)
    obs = models.example_observation(2, state_dim)
    return jax.eval_shape(
        lambda key: models.init_params(model, key, obs, action_shape), jax.random.key(0)
    )


@pytest.mark.parametrize(
    "length,kernel,stride,padding",
    [
        (16, 5, 1, None),
        (4, 5, 1, None),
        (2, 5, 1, None),
        (16, 3, 2, 1),
        (4, 3, 2, 1),
        (7, 1, 1, None),
    ],
)
def test_conv1d_matches_lax_conv(length, kernel, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, length, 6))
    conv = layers.Conv1d(5, kernel, strides=stride, padding=padding)
    variables = conv.init(jax.random.key(1), x)
    params = jax.tree.map(lambda v: v + 0.1, variables["params"])  # nonzero bias
    params = layers.nn.meta.unbox(params)
    got = jax.jit(conv.apply)({"params": params}, x)
    p = kernel // 2 if padding is None else padding
    want = (
        jax.lax.conv_general_dilated(
            x, params["kernel"], (stride,), [(p, p)], dimension_numbers=("NWC", "WIO", "NWC")
        )
        + params["bias"]
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 4, 8])
def test_conv_transpose1d_matches_pytorch_semantics(length):
    """y[o] = b + sum_{o = s i - p + k} x[i] W_k (torch.nn.ConvTranspose1d(k=4, s=2, p=1))."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, length, 3)))
    conv = layers.ConvTranspose1d(4, kernel_size=4, strides=2, padding=1)
    params = layers.nn.meta.unbox(conv.init(jax.random.key(1), x)["params"])
    params = jax.tree.map(lambda v: np.asarray(v) + 0.1, params)
    got = conv.apply({"params": params}, jnp.asarray(x))
    w, b = params["kernel"], params["bias"]
    want = np.tile(b, (2, 2 * length, 1)).astype(np.float64)
    for i in range(length):
        for k in range(4):
            o = 2 * i - 1 + k
            if 0 <= o < 2 * length:
                want[:, o] += x[:, i] @ w[k]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sinusoidal_embedding_matches_dp_formula():
    t = np.array([0.0, 1.0, 37.0, 99.0])
    dim = 16
    half = dim // 2
    freqs = np.exp(np.arange(half) * -(np.log(10000.0) / (half - 1)))
    want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], -1)
    np.testing.assert_allclose(layers.sinusoidal_embedding(jnp.asarray(t), dim), want, atol=1e-5)


def test_mish():
    x = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(
        layers.mish(jnp.asarray(x)), x * np.tanh(np.log1p(np.exp(x))), atol=1e-6
    )


def test_tiny_unet_shapes_jit_and_inputs():
    model = models.create_model(ml_collections.ConfigDict(TINY))
    obs = _obs()
    params = models.init_params(model, jax.random.key(0), obs, (16, 2))
    x = jax.random.normal(jax.random.key(1), (3, 16, 2))
    t = jnp.array([0.0, 5.0, 99.0])
    apply_fn = jax.jit(models.make_apply_fn(model))
    out = apply_fn(params, obs, x, t)
    assert out.shape == (3, 16, 2) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # Extra keys and a missing pad mask are fine; the output depends on obs, x and t.
    obs_extra = {schema.OBS_STATE: obs[schema.OBS_STATE], "observation/other": jnp.zeros(3)}
    np.testing.assert_allclose(apply_fn(params, obs_extra, x, t), out, rtol=1e-6)
    assert not np.allclose(apply_fn(params, obs, x, t + 1.0), out)
    assert not np.allclose(apply_fn(params, obs, x + 0.1, t), out)
    obs2 = {**obs, schema.OBS_STATE: obs[schema.OBS_STATE] + 1.0}
    assert not np.allclose(apply_fn(params, obs2, x, t), out)


def test_param_counts():
    tiny = _num_params(_abstract_params(ml_collections.ConfigDict(TINY), 20))
    full = _num_params(_abstract_params(ml_collections.ConfigDict(DP_LOWDIM), 20))
    print(f"\nunet1d params: tiny={tiny:,} DP low-dim (256,512,1024), T*S=40: {full:,}")
    assert 10_000 < tiny < 200_000
    assert 64e6 < full < 67e6  # DP's Push-T low-dim U-Net: ~65M


def test_param_tree_and_logical_axes():
    model = models.create_model(TINY)
    obs = models.example_observation(2, 9)
    params = _abstract_params(TINY, 9)
    assert params["down0_res0"]["block0"]["conv"]["kernel"].shape == (5, 2, 16)
    assert params["up0_upsample"]["kernel"].shape == (4, 16, 16)
    assert params["final_conv"]["kernel"].shape == (1, 16, 2)
    axes = models.param_logical_axes(model, obs, (16, 2))
    assert tuple(axes["down0_res0"]["block0"]["conv"]["kernel"]) == ("conv_kernel", "embed", "mlp")


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model"):
        models.create_model({"name": "nope"})
    model = unet1d.ConditionalUnet1D(down_dims=(16, 32, 64), time_embed_dim=16)
    with pytest.raises(ValueError, match="divisible"):
        model.init(jax.random.key(0), _obs(), jnp.zeros((3, 6, 2)), jnp.zeros(3))
