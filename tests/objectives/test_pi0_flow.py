"""π0 (tiny) under the flow objective: the prefix KV cache changes nothing but the cost."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import models, objectives
from action_gen.data import schema, tokenizer

B, H, A = 2, 8, 4


def _setup():
    model = models.create_model({"name": "pi0", "variant": "tiny", "action_dim": A})
    tokens, mask = tokenizer.tokenize(["go around the left of the obstacle", "right"], 16)
    obs = {
        schema.OBS_STATE: jnp.asarray(np.random.default_rng(0).normal(size=(B, 1, 3)), jnp.float32),
        schema.image_key("cam0"): jnp.asarray(
            np.random.default_rng(1).integers(0, 255, (B, 1, 32, 32, 3)), jnp.uint8
        ),
        schema.PROMPT_TOKENS: jnp.asarray(tokens),
        schema.PROMPT_MASK: jnp.asarray(mask),
    }
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    config = ml_collections.ConfigDict(
        dict(
            name="flow",
            time_distribution="beta",
            time_scale=100.0,
            integrator="heun",
            clip_sample=False,
            num_sample_steps=4,
        )
    )
    return model, obs, params, objectives.create_objective(config, (H, A))


def test_sampling_with_prefix_cache_equals_without():
    model, obs, params, objective = _setup()
    plain = models.make_uncached_apply_fn(model)
    cached = models.make_apply_fn(model)
    rng = jax.random.key(3)
    without = jax.jit(lambda p, o, r: objective.sample(plain, p, o, r, 4))(params, obs, rng)
    with_cache = jax.jit(lambda p, o, r: objective.sample(cached, p, o, r, 4))(params, obs, rng)
    assert without.shape == (B, H, A)
    np.testing.assert_allclose(np.asarray(with_cache), np.asarray(without), atol=1e-5)


def test_flow_loss_on_pi0_is_finite_and_differentiable():
    model, obs, params, objective = _setup()
    batch = dict(obs)
    batch[schema.ACTIONS] = jnp.zeros((B, H, A))
    loss_fn = lambda p: objective.loss(models.make_apply_fn(model), p, batch, jax.random.key(0))[0]  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_consistency_distillation_of_a_pi0_teacher():
    """π0 under the consistency objective (configs/consistency_pi0_obstacle.py): a student
    equal to its teacher on one interval has zero loss (padded action dims masked); other
    weights a finite, differentiable one; few-step sampling with the prefix KV cache
    equals sampling without it."""
    model, obs, params, _ = _setup()
    apply_fn = models.make_apply_fn(model)
    batch = {**obs, schema.ACTIONS: jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (B, H, A)))}
    batch[schema.ACTION_DIM_MASK] = jnp.asarray([[True] * (A - 1) + [False]] * B)

    def objective(num_teacher_steps, student_params=None):
        config = {
            "name": "consistency",
            "parameterization": "flow",
            "time_scale": 100.0,
            "num_teacher_steps": num_teacher_steps,
            "target": "teacher",
            "sigma_data": 0.0,
        }
        return objectives.create_objective(config, (H, A), objectives.Teacher(apply_fn, params))

    same = objective(1).loss(apply_fn, params, batch, jax.random.key(0))[0]
    assert float(same) < 1e-10
    student = jax.tree.map(lambda p: p * 1.05, params)
    loss_fn = lambda p: objective(2).loss(apply_fn, p, batch, jax.random.key(0))[0]  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(student)
    assert np.isfinite(float(value)) and float(value) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    uncached = models.make_uncached_apply_fn(model)
    for steps in (1, 2):
        cached_chunk = objective(2).sample(apply_fn, student, obs, jax.random.key(5), steps)
        plain_chunk = objective(2).sample(uncached, student, obs, jax.random.key(5), steps)
        assert cached_chunk.shape == (B, H, A)
        np.testing.assert_allclose(np.asarray(cached_chunk), np.asarray(plain_chunk), atol=1e-5)


def test_best_of_m_sampling_on_pi0():
    """Best-of-M sampling by stability (`num_candidates`) runs π0's sampler vmapped over
    the candidates with the observation unbatched: the chunk with the prefix KV cache
    equals the one without it."""
    model, obs, params, _ = _setup()
    config = dict(name="flow", time_scale=100.0, clip_sample=False, num_candidates=3)
    objective = objectives.create_objective(config, (H, A))
    rng = jax.random.key(6)
    chunks = [
        jax.jit(lambda p, r, f=apply: objective.sample(f, p, obs, r, 2))(params, rng)
        for apply in (models.make_apply_fn(model), models.make_uncached_apply_fn(model))
    ]
    assert chunks[0].shape == (B, H, A) and np.isfinite(np.asarray(chunks[0])).all()
    np.testing.assert_allclose(np.asarray(chunks[0]), np.asarray(chunks[1]), atol=1e-5)
