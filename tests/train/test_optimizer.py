"""Warm-up + cosine schedule and the clipped AdamW chain."""

import jax.numpy as jnp
import numpy as np
import optax

from action_gen import config_schema
from action_gen.train.optimizer import create_learning_rate_schedule, create_optimizer


def _config(**overrides):
    config = config_schema.section("optimizer")
    config.update(
        dict(
            lr=1e-3,
            warmup_steps=10,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip_norm=1.0,
            final_lr_fraction=0.0,
        )
    )
    config.update(overrides)
    return config


def test_warmup_then_cosine():
    schedule = create_learning_rate_schedule(_config(), num_train_steps=110)
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 1e-3, rtol=1e-6)
    # Cosine: halfway through the decay the rate is half the peak.
    np.testing.assert_allclose(schedule(60), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-9)


def test_global_norm_clipping_applies_before_adam():
    tx, _ = create_optimizer(_config(warmup_steps=0, lr=1.0), num_train_steps=10)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    huge = {"w": jnp.asarray([3e6, 4e6])}
    updates, _ = tx.update(huge, state, params)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1.0, 0.9, 0.999, 1e-8, 0.0))
    expected, _ = reference.update(huge, reference.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
