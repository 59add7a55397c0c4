"""Regression baseline: masked MSE of a direct prediction."""

import jax
import jax.numpy as jnp
import numpy as np

from action_gen.data import schema
from action_gen.objectives import regression

B, H, A = 3, 8, 2


def _apply_fn(params, obs, x, t):
    """Records that it is called with zeros; predicts a function of the observation."""
    assert x.shape == (B, H, A)
    cond = jnp.mean(obs[schema.OBS_STATE], axis=(1, 2))[:, None, None]
    return params["w"] * cond + params["b"] + 10.0 * x + t[:, None, None]


PARAMS = {"w": 0.5, "b": jnp.linspace(-1, 1, H * A).reshape(H, A)}


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, H), bool)
    mask[1, 3:] = False
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, 2, 4)), jnp.float32),
        schema.ACTIONS: jnp.asarray(rng.uniform(-1, 1, size=(B, H, A)), jnp.float32),
        schema.ACTION_PAD_MASK: jnp.asarray(mask),
    }


def test_loss_matches_numpy_masked_mse():
    batch = _batch()
    value, aux = jax.jit(lambda p, b, r: regression.loss(_apply_fn, p, b, r))(
        PARAMS, batch, jax.random.key(0)
    )
    cond = np.asarray(batch[schema.OBS_STATE]).mean(axis=(1, 2))[:, None, None]
    pred = 0.5 * cond + np.asarray(PARAMS["b"])  # x = 0, t = 0
    mask = np.asarray(batch[schema.ACTION_PAD_MASK])[..., None]
    err = (pred - np.asarray(batch[schema.ACTIONS])) ** 2
    want = (err * mask).sum() / (mask.sum() * A)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    np.testing.assert_allclose(aux["mse"], want, rtol=1e-6)


def test_padding_and_rng_do_not_matter():
    batch = _batch()
    changed = dict(batch)
    changed[schema.ACTIONS] = batch[schema.ACTIONS].at[1, 3:].set(100.0)
    l1, _ = regression.loss(_apply_fn, PARAMS, batch, jax.random.key(0))
    l2, _ = regression.loss(_apply_fn, PARAMS, changed, jax.random.key(1))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    no_mask = {k: v for k, v in batch.items() if k != schema.ACTION_PAD_MASK}
    l3, _ = regression.loss(_apply_fn, PARAMS, no_mask, jax.random.key(0))
    assert not np.isclose(l1, l3)  # without a mask every action counts


def test_masked_mse_edge_cases():
    pred, target = jnp.ones((2, 3, 2)), jnp.zeros((2, 3, 2))
    assert float(regression.masked_mse(pred, target)) == 1.0
    assert float(regression.masked_mse(pred, target, jnp.zeros((2, 3), bool))) == 0.0


def test_sample_is_the_prediction_and_ignores_rng_and_steps():
    batch = _batch()
    obs = schema.observation_of(batch)
    a = regression.sample(_apply_fn, PARAMS, obs, jax.random.key(0), 10, action_shape=(H, A))
    b = regression.sample(_apply_fn, PARAMS, obs, jax.random.key(5), 1, action_shape=(H, A))
    np.testing.assert_array_equal(a, b)
    cond = np.asarray(obs[schema.OBS_STATE]).mean(axis=(1, 2))[:, None, None]
    np.testing.assert_allclose(a, 0.5 * cond + np.asarray(PARAMS["b"]), rtol=1e-6)


def test_masked_mse_with_action_dim_mask_matches_numpy():
    rng = np.random.default_rng(3)
    pred, target = rng.normal(size=(2, B, H, 4)).astype(np.float32)
    mask = rng.uniform(size=(B, H)) > 0.3
    dim_mask = np.array([[1, 1, 0, 0]] * B, bool)
    weights = mask[:, :, None] & dim_mask[:, None, :]
    expected = np.sum(weights * (pred - target) ** 2) / np.sum(weights)
    got = jax.jit(regression.masked_mse)(pred, target, mask, dim_mask)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_losses_ignore_padded_action_dims():
    """Anything the model outputs on padded dims (π0 pads to 32) leaves every loss unchanged."""
    from action_gen.objectives import diffusion, flow

    rng = np.random.default_rng(4)
    padded_dim = 5
    batch = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, 2, 4)), jnp.float32),
        schema.ACTIONS: jnp.asarray(rng.uniform(-1, 1, size=(B, H, padded_dim)), jnp.float32),
        schema.ACTION_DIM_MASK: jnp.asarray(np.array([[1, 1, 0, 0, 0]] * B, bool)),
    }

    def make_apply(junk):
        def apply_fn(params, obs, x, t):
            out = 0.1 * x + params * jnp.mean(obs[schema.OBS_STATE])
            return out.at[..., 2:].set(junk)

        return apply_fn

    key = jax.random.key(0)
    for loss_fn in (regression.loss, flow.loss, diffusion.loss):
        a, _ = loss_fn(make_apply(0.0), 0.3, batch, key)
        b, _ = loss_fn(make_apply(1e3), 0.3, batch, key)
        np.testing.assert_allclose(a, b, rtol=1e-6)
