"""Gradient accumulation: 4 micro-batches of B/4 make the same update as one batch of B."""

import jax
import numpy as np
from jax.sharding import Mesh

from action_gen.train import sharding
from action_gen.train.step import split_micro_batches
from tests.train import scale_helpers


def _step(config, mesh, batch):
    init_fn, step_fn, _, batch_sharding = scale_helpers.build(config, mesh)
    init_rng, train_rng = jax.random.split(jax.random.key(0))
    state = init_fn(init_rng)
    initial = scale_helpers.to_numpy(state.params)
    state, metrics = step_fn(state, sharding.global_batch(batch, batch_sharding), train_rng)
    return initial, state, jax.device_get(metrics)


def test_four_micro_batches_equal_one_batch():
    # Regression is deterministic (no noise draw), so the only difference between the two
    # runs is how the batch is cut: mean of 4 micro-batch means = mean over all 32 rows.
    config = scale_helpers.make_config("regression", num_steps=1)
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), sharding.MESH_AXES)
    (batch,) = scale_helpers.synthetic_batches(config, 1, 32, seed=3)
    initial, whole, whole_metrics = _step(config, mesh, batch)
    config.train.grad_accum_steps = 4
    _, accumulated, accum_metrics = _step(config, mesh, batch)

    np.testing.assert_allclose(accum_metrics["loss"], whole_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(accum_metrics["grad_norm"], whole_metrics["grad_norm"], rtol=1e-4)
    moved = max(
        float(np.max(np.abs(np.asarray(a) - b)))
        for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(initial), strict=True)
    )
    assert moved > 1e-4  # the step did change the weights
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
        whole.params,
        accumulated.params,
    )


def test_micro_batches_are_strided_rows():
    x = np.arange(8 * 3).reshape(8, 3)
    micro = np.asarray(split_micro_batches({"x": x}, 4)["x"])
    assert micro.shape == (4, 2, 3)
    np.testing.assert_array_equal(micro[1], x[[1, 5]])
    np.testing.assert_array_equal(np.sort(micro.reshape(-1, 3), axis=0), x)


def _toy_setup():
    import optax

    from action_gen.data import schema
    from action_gen.train.state import create_train_state

    rng = np.random.default_rng(0)
    batch = {
        schema.OBS_STATE: rng.normal(size=(8, 2, 3)).astype(np.float32),
        schema.ACTIONS: rng.normal(size=(8, 1, 2)).astype(np.float32),
    }
    seen = []

    def apply_fn(params, obs, x, t):
        del t
        seen.append((params["w"].dtype, obs[schema.OBS_STATE].dtype, x.dtype))
        h = jax.numpy.tanh(jax.numpy.einsum("bts,sa->ba", obs[schema.OBS_STATE], params["w"]))
        return h[:, None, :] + x

    def loss_fn(apply, params, b, key):
        del key
        pred = apply(params, b, jax.numpy.zeros_like(b[schema.ACTIONS]), None)
        return jax.numpy.mean((pred - b[schema.ACTIONS]) ** 2), {}

    tx = optax.sgd(0.1)
    state = create_train_state({"w": rng.normal(size=(3, 2)).astype(np.float32)}, tx)
    return state, batch, tx, apply_fn, loss_fn, seen


def test_bf16_compute_keeps_fp32_master_weights():
    import functools

    from action_gen.train.step import train_step

    state, batch, tx, apply_fn, loss_fn, seen = _toy_setup()
    results = {}
    for dtype in ("float32", "bfloat16"):
        step = jax.jit(
            functools.partial(
                train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, compute_dtype=dtype
            )
        )
        results[dtype] = step(state, batch, jax.random.key(0))
    assert seen[0] == (np.float32, np.float32, np.float32)
    assert seen[-1] == (jax.numpy.bfloat16,) * 3  # the model computed in bf16
    (f32_state, f32_metrics), (bf16_state, bf16_metrics) = results.values()
    assert bf16_state.params["w"].dtype == np.float32  # master weights stay fp32
    assert bf16_metrics["loss"].dtype == np.float32
    np.testing.assert_allclose(bf16_metrics["loss"], f32_metrics["loss"], rtol=2e-2)
    np.testing.assert_allclose(bf16_state.params["w"], f32_state.params["w"], atol=2e-2)
    assert not np.array_equal(bf16_state.params["w"], f32_state.params["w"])


def test_remat_changes_nothing_but_memory():
    import functools

    import pytest

    from action_gen.train.step import train_step

    state, batch, tx, apply_fn, loss_fn, _ = _toy_setup()
    out = {}
    for remat in ("none", "full", "dots"):
        step = jax.jit(
            functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx, remat=remat)
        )
        out[remat] = step(state, batch, jax.random.key(0))[0].params["w"]
    np.testing.assert_allclose(out["full"], out["none"], rtol=1e-6)
    np.testing.assert_allclose(out["dots"], out["none"], rtol=1e-6)
    with pytest.raises(ValueError, match="train.remat"):
        train_step(state, batch, jax.random.key(0), apply_fn=apply_fn, loss_fn=loss_fn, tx=tx,
                   remat="everything")  # fmt: skip
