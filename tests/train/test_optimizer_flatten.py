"""`optimizer.flatten` (optax.flatten: the optimizer on one flat vector, fewer kernels)
makes the same updates as the per-leaf optimizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from action_gen.train.optimizer import create_optimizer


def _config(flatten: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(lr=1e-2, warmup_steps=2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=1e-2,
             grad_clip_norm=0.5, final_lr_fraction=0.0, flatten=flatten)
    )  # fmt: skip


def test_flat_optimizer_makes_the_same_updates():
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "dense": {"kernel": jax.random.normal(keys[0], (5, 3)), "bias": jnp.zeros(3)},
        "conv": jax.random.normal(keys[1], (3, 2, 4)),
    }
    runs = {}
    for flatten in (False, True):
        tx, _ = create_optimizer(_config(flatten), num_train_steps=10)
        state, p = tx.init(params), params
        for step in range(4):  # fresh random gradients; clipping is active (norm > 0.5)
            grads = jax.tree.map(
                lambda x, s=step: jax.random.normal(jax.random.key(10 + s), x.shape), p
            )
            updates, state = jax.jit(tx.update)(grads, state, p)
            p = optax.apply_updates(p, updates)
        runs[flatten] = p
    for a, b in zip(jax.tree.leaves(runs[False]), jax.tree.leaves(runs[True]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
