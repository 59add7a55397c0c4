"""The pure train step: a manual optax update + EMA, deterministic under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from action_gen.data import schema
from action_gen.train.state import create_train_state, ema_decay
from action_gen.train.step import train_step


def _apply_fn(params, obs, noisy_actions, time):
    del noisy_actions, time
    return jnp.einsum("bts,sa->ba", obs[schema.OBS_STATE], params["w"])[:, None, :]


def _loss(apply_fn, params, batch, rng):
    noise = jax.random.normal(rng, batch[schema.ACTIONS].shape)
    pred = apply_fn(params, batch, None, None)
    return jnp.mean((pred - batch[schema.ACTIONS] - 0.01 * noise) ** 2), {"aux": jnp.float32(1)}


def _setup():
    rng = np.random.default_rng(0)
    batch = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32),
        schema.ACTIONS: jnp.asarray(rng.normal(size=(4, 1, 2)), jnp.float32),
    }
    tx = optax.adamw(1e-2)
    state = create_train_state({"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}, tx)
    step = jax.jit(functools.partial(train_step, apply_fn=_apply_fn, loss_fn=_loss, tx=tx))
    return state, batch, tx, step


def test_train_step_matches_manual_update():
    state, batch, tx, step = _setup()
    base_rng = jax.random.key(7)
    new_state, metrics = step(state, batch, base_rng)

    step_rng = jax.random.fold_in(base_rng, 0)
    grads = jax.grad(lambda p: _loss(_apply_fn, p, batch, step_rng)[0])(state.params)
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    np.testing.assert_allclose(new_state.params["w"], expected["w"], rtol=1e-6)
    assert int(new_state.step) == 1
    # First EMA update has decay 0: EMA equals the new parameters.
    np.testing.assert_array_equal(new_state.ema_params["w"], new_state.params["w"])
    assert set(metrics) >= {"loss", "grad_norm", "ema_decay", "aux"}

    second, metrics2 = step(new_state, batch, base_rng)
    decay = float(ema_decay(jnp.int32(1)))
    np.testing.assert_allclose(float(metrics2["ema_decay"]), decay)
    np.testing.assert_allclose(
        second.ema_params["w"],
        decay * new_state.ema_params["w"] + (1 - decay) * second.params["w"],
        rtol=1e-6,
    )


def test_train_step_is_deterministic():
    state, batch, _, step = _setup()
    a, _ = step(state, batch, jax.random.key(1))
    b, _ = step(state, batch, jax.random.key(1))
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
