"""Discrete action tokens: binning, the teacher-forced loss vs numpy, the scanned decoder."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models, objectives
from action_gen.data import schema
from action_gen.objectives import tokens

B, T, S, H, A, V = 3, 2, 4, 4, 2, 8


def test_quantize_dequantize_round_trip():
    ids = jnp.arange(256)
    np.testing.assert_array_equal(tokens.quantize(tokens.dequantize(ids)), ids)
    a = jnp.linspace(-1.0, 1.0, 10_001)
    err = np.abs(np.asarray(a - tokens.dequantize(tokens.quantize(a))))
    assert err.max() <= 1.0 / 256 + 1e-6  # half a bin width, w = 2 / 256
    assert abs(err.mean() - 1.0 / 512) < 1e-4  # w / 4 for evenly spread values
    # Edges and out-of-range values land in the first / last bin.
    np.testing.assert_array_equal(
        tokens.quantize(jnp.array([-2.0, -1.0, 1.0, 3.0])), [0, 0, 255, 255]
    )
    np.testing.assert_allclose(tokens.dequantize(jnp.array([0, 255])), [-1 + 1 / 256, 1 - 1 / 256])
    # Hand-computed with V = 4 (bins of width 0.5): -0.3 is in [-0.5, 0) → bin 1, centre -0.25.
    assert int(tokens.quantize(jnp.float32(-0.3), 4)) == 1
    assert float(tokens.dequantize(jnp.int32(1), 4)) == -0.25


def _fake_apply(params, obs, x, t):
    """Logits that depend on the params, the observation and the teacher-forced tokens."""
    del t
    state = obs[schema.OBS_STATE].sum(axis=(1, 2))[:, None, None, None]  # [B, 1, 1, 1]
    return params["w"][None] * state + params["b"][None] + 0.1 * x[..., None]


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(H, A, V)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(H, A, V)), jnp.float32),
    }
    state = rng.normal(size=(B, T, S)).astype(np.float32)
    actions = rng.uniform(-1.2, 1.2, size=(B, H, A)).astype(np.float32)
    pad = np.ones((B, H), bool)
    pad[0, 2:] = False
    dim = np.ones((B, A), bool)
    dim[1, 1] = False
    batch = {
        schema.OBS_STATE: jnp.asarray(state),
        schema.ACTIONS: jnp.asarray(actions),
        schema.ACTION_PAD_MASK: jnp.asarray(pad),
        schema.ACTION_DIM_MASK: jnp.asarray(dim),
    }
    value, aux = jax.jit(
        lambda p, b: tokens.loss(_fake_apply, p, b, jax.random.key(0), num_bins=V)
    )(params, batch)

    # numpy: bins, logits (the model sees the bin indices), masked mean NLL.
    clipped = np.clip(actions, -1, 1)
    target = np.clip(np.floor((clipped + 1) * V / 2), 0, V - 1).astype(int)
    logits = (
        np.asarray(params["w"])[None] * state.sum(axis=(1, 2))[:, None, None, None]
        + np.asarray(params["b"])[None]
        + 0.1 * target[..., None]
    )
    nll = -np.take_along_axis(_log_softmax(logits), target[..., None], -1)[..., 0]
    weights = pad[:, :, None] * dim[:, None, :]
    expected = (weights * nll).sum() / weights.sum()
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["cross_entropy"], expected, rtol=1e-5)
    accuracy = (weights * (logits.argmax(-1) == target)).sum() / weights.sum()
    np.testing.assert_allclose(aux["token_accuracy"], accuracy, rtol=1e-6)
    centres = -1 + (target + 0.5) * 2 / V
    quant = (weights * np.abs(clipped - centres)).sum() / weights.sum()
    np.testing.assert_allclose(aux["quantization_error"], quant, rtol=1e-5)


def test_loss_rejects_a_model_that_does_not_return_logits():
    batch = {
        schema.OBS_STATE: jnp.zeros((B, T, S)),
        schema.ACTIONS: jnp.zeros((B, H, A)),
    }
    with pytest.raises(ValueError, match="token_head"):
        tokens.loss(lambda p, o, x, t: x, {}, batch, jax.random.key(0), num_bins=V)


@pytest.fixture(scope="module")
def tiny_model():
    model = models.create_model(
        ml_collections.ConfigDict(
            dict(name="token_head", num_bins=V, embed_dim=16, num_layers=1, num_heads=2)
        )
    )
    obs = {
        schema.OBS_STATE: jnp.asarray(np.random.default_rng(1).normal(size=(B, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((B, T), bool),
    }
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    return models.make_apply_fn(model), params, obs


def test_token_head_is_causal(tiny_model):
    apply_fn, params, obs = tiny_model
    x = jnp.asarray(np.random.default_rng(2).integers(0, V, size=(B, H, A)), jnp.float32)
    logits = apply_fn(params, obs, x, jnp.zeros((B,)))
    assert logits.shape == (B, H, A, V)
    changed = apply_fn(params, obs, x.at[:, 1, 0].set((x[:, 1, 0] + 1) % V), jnp.zeros((B,)))
    diff = np.abs(np.asarray(changed - logits)).reshape(B, H * A, V).max(axis=(0, 2))
    position = 1 * A + 0  # time-major index of token (h=1, a=0)
    assert np.all(diff[: position + 1] == 0)  # itself and earlier tokens: unchanged
    assert np.all(diff[position + 1 :] > 0)  # later tokens see it


def test_greedy_sample_matches_step_by_step_decoding(tiny_model):
    apply_fn, params, obs = tiny_model
    objective = objectives.create_objective(
        dict(name="tokens", num_bins=V, temperature=0.0, num_sample_steps=7), (H, A)
    )
    sample = jax.jit(lambda p, o, r: objective.sample(apply_fn, p, o, r, 7))
    a = sample(params, obs, jax.random.key(0))
    assert a.shape == (B, H, A) and a.dtype == jnp.float32
    # Greedy decoding ignores the key; compiled once for both calls.
    np.testing.assert_array_equal(a, sample(params, obs, jax.random.key(1)))
    assert sample._cache_size() == 1

    # Reference: decode in Python, one model call per token, argmax at that position.
    buffer = np.zeros((B, H * A), np.int64)
    for n in range(H * A):
        x = jnp.asarray(buffer.reshape(B, H, A), jnp.float32)
        logits = np.asarray(apply_fn(params, obs, x, jnp.zeros((B,)))).reshape(B, H * A, V)
        buffer[:, n] = logits[:, n].argmax(-1)
    expected = -1 + (buffer.reshape(B, H, A) + 0.5) * 2 / V
    np.testing.assert_allclose(a, expected, atol=1e-6)


def test_temperature_sample_is_seeded(tiny_model):
    apply_fn, params, obs = tiny_model
    objective = objectives.create_objective(
        dict(name="tokens", num_bins=V, temperature=1.0, num_sample_steps=1), (H, A)
    )
    sample = jax.jit(lambda p, o, r: objective.sample(apply_fn, p, o, r, 1))
    a, b = sample(params, obs, jax.random.key(3)), sample(params, obs, jax.random.key(3))
    c = sample(params, obs, jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The batch size follows the observation (the contract every objective meets).
    one = {k: v[:1] for k, v in obs.items()}
    assert sample(params, one, jax.random.key(3)).shape == (1, H, A)
    # Every value is a bin centre.
    ids = (np.asarray(a) + 1) * V / 2 - 0.5
    np.testing.assert_allclose(ids, np.round(ids), atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        objectives.create_objective(dict(name="tokens", temperature=-1.0), (H, A)).sample(
            apply_fn, params, obs, jax.random.key(0), 1
        )


def test_tokens_loss_trains_under_jit(tiny_model):
    apply_fn, params, obs = tiny_model
    objective = objectives.create_objective(dict(name="tokens", num_bins=V), (H, A))
    batch = {
        **obs,
        schema.ACTIONS: jnp.full((B, H, A), 0.3),
        schema.ACTION_PAD_MASK: jnp.ones((B, H), bool),
    }
    grad_fn = jax.jit(jax.grad(lambda p: objective.loss(apply_fn, p, batch, jax.random.key(0))[0]))
    grads = grad_fn(params)
    value, aux = jax.jit(lambda p: objective.loss(apply_fn, p, batch, jax.random.key(0)))(params)
    assert value.shape == () and value.dtype == jnp.float32 and np.isfinite(value)
    assert set(aux) == {"cross_entropy", "token_accuracy", "quantization_error"}
    assert all(np.shape(v) == () for v in aux.values())
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


def test_quantization_error_in_raw_and_normalized_units():
    stats = {"min": np.array([0.0, -2.0]), "max": np.array([1.0, 2.0])}
    raw = np.array([[0.5, 0.0], [0.1, -1.3], [1.0, 2.0]])
    result = tokens.quantization_error(raw, stats, "minmax", num_bins=4)
    normed = np.stack([2 * raw[:, 0] - 1, raw[:, 1] / 2], axis=-1)
    centres = -1 + (np.clip(np.floor((normed + 1) * 2), 0, 3) + 0.5) * 0.5
    err_norm = np.abs(normed - centres)
    err_raw = err_norm * np.array([0.5, 2.0])  # half-range of each dim
    np.testing.assert_allclose(result["quantization_error_normalized"], err_norm.mean(), rtol=1e-5)
    np.testing.assert_allclose(result["quantization_error_raw"], err_raw.mean(), rtol=1e-5)
    np.testing.assert_allclose(result["quantization_error_raw_max"], err_raw.max(), rtol=1e-5)
