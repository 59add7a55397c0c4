"""EMA warm-up formula and update vs Diffusion Policy's reference implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from action_gen.train.state import create_train_state, ema_decay, update_ema


def reference_dp_decay(optimization_step, power=0.75, max_value=0.9999, min_value=0.0):
    """Diffusion Policy's EMAModel.get_decay, written out in plain Python."""
    step = max(0, optimization_step - 0 - 1)
    value = 1 - (1 + step / 1.0) ** -power
    if step <= 0:
        return 0.0
    return max(min_value, min(value, max_value))


def test_ema_decay_matches_reference():
    steps = [0, 1, 2, 3, 10, 100, 1_000, 10_000, 300_000]
    got = jax.jit(jax.vmap(ema_decay))(jnp.asarray(steps))
    want = [reference_dp_decay(s) for s in steps]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    assert float(got[-1]) == np.float32(0.9999)


def test_update_ema_is_convex_combination():
    ema = {"w": jnp.ones(3)}
    params = {"w": jnp.full(3, 5.0)}
    out = update_ema(ema, params, jnp.float32(0.75))
    np.testing.assert_allclose(out["w"], 0.75 * 1 + 0.25 * 5)
    # decay 0 (first update) copies the parameters.
    np.testing.assert_array_equal(update_ema(ema, params, jnp.float32(0.0))["w"], params["w"])


def test_create_train_state():
    params = {"w": jnp.arange(4.0)}
    state = create_train_state(params, optax.adam(1e-3))
    assert int(state.step) == 0
    np.testing.assert_array_equal(state.ema_params["w"], params["w"])
    assert state.ema_params["w"] is not params["w"]
