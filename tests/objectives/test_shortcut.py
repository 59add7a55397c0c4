"""Shortcut models: the U-Net's optional step-size input, the loss's two kinds of rows,
and the S-step sampler."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models, objectives
from action_gen.data import schema
from action_gen.objectives import shortcut

B, T, S, H, A = 8, 2, 5, 8, 2
UNET = {"name": "unet1d", "down_dims": (8,), "time_embed_dim": 8, "n_groups": 4}


def _obs(batch=B):
    rng = np.random.default_rng(0)
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, T), bool),
    }


def _model(step_input: bool):
    model = models.create_model(ml_collections.ConfigDict({**UNET, "step_input": step_input}))
    return model, models.init_params(model, jax.random.key(0), _obs(), (H, A))


def test_step_input_is_optional_and_off_by_default():
    """Without `step_input` the parameter tree is DP's (no step MLP) and a [B, 2] time is
    refused; with it, a [B] time means step input 0."""
    plain_model, plain = _model(False)
    step_model, with_step = _model(True)
    assert "step_mlp" not in plain and "step_mlp" in with_step
    assert set(with_step) - set(plain) == {"step_mlp"}
    x = jax.random.normal(jax.random.key(1), (B, H, A))
    t = jnp.full((B,), 30.0)
    apply = step_model.apply
    np.testing.assert_allclose(
        apply({"params": with_step}, _obs(), x, t),
        apply({"params": with_step}, _obs(), x, jnp.stack([t, jnp.zeros(B)], -1)),
        atol=1e-6,
    )
    assert not np.allclose(
        apply({"params": with_step}, _obs(), x, jnp.stack([t, jnp.zeros(B)], -1)),
        apply({"params": with_step}, _obs(), x, jnp.stack([t, jnp.full((B,), 30.0)], -1)),
    )
    with pytest.raises(AssertionError):
        plain_model.apply({"params": plain}, _obs(), x, jnp.stack([t, t], -1))


def test_loss_rows_flow_matching_and_self_consistency():
    """A model whose output is a constant c: its two half steps agree with one full step,
    so the self-consistency rows' loss is 0, while the flow-matching rows regress x - ε."""

    def constant(params, obs, x, time):
        assert time.shape == (x.shape[0], 2)  # (t · time_scale, j · step_scale)
        return jnp.zeros_like(x) + params["c"]

    params = {"c": jnp.float32(0.3)}
    batch = {
        **_obs(),
        schema.ACTIONS: jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (B, H, A))),
    }
    value, aux = shortcut.loss(
        constant, params, batch, jax.random.key(2), bootstrap_fraction=0.25, target="online"
    )
    assert float(aux["bootstrap_mse"]) < 1e-12
    assert float(aux["flow_mse"]) > 0.1
    np.testing.assert_allclose(value, aux["flow_mse"] * 6 / 8, rtol=1e-5)  # 2 of 8 rows


def test_sampler_steps_are_powers_of_two_and_one_step_is_one_jump():
    model, params = _model(True)
    apply_fn = models.make_apply_fn(model)
    objective = objectives.create_objective({"name": "shortcut", "max_steps_log2": 3}, (H, A))
    noise = jax.random.normal(jax.random.key(3), (B, H, A))
    one = objective.sample_from_noise(apply_fn, params, _obs(), jax.random.key(0), 1, noise)
    jump = apply_fn(params, _obs(), noise, jnp.zeros((B, 2)))  # t = 0, j = 0 (d = 1)
    np.testing.assert_allclose(one, jnp.clip(noise + jump, -1, 1), atol=1e-5)
    for bad in (3, 16):
        with pytest.raises(ValueError, match="power of two"):
            objective.sample(apply_fn, params, _obs(), jax.random.key(0), bad)
    assert objective.uses_ema_params and not objective.needs_teacher
