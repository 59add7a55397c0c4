"""The contract every objective must meet with a real (tiny) model.

create_objective(config, (H, A)) → Objective, called exactly as train/ and sample/ call
it: loss(apply_fn, params, batch, rng), sample(apply_fn, params, obs, rng, N), and the
capabilities it carries (sample_guided, representation_error) instead of its name.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import parameterized

from action_gen import models, objectives
from action_gen.data import schema

B, T, S, H, A = 4, 2, 5, 16, 2
NUM_STEPS = 4
UNET = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}
TOKEN_HEAD = {"name": "token_head", "num_bins": 16, "embed_dim": 16, "num_layers": 1}

# name -> (objective config, model config)
CONFIGS = {
    "diffusion_ddim": (dict(name="diffusion", sampler="ddim", num_train_steps=20), UNET),
    "diffusion_ddpm_v": (
        dict(name="diffusion", sampler="ddpm", num_train_steps=20, prediction_type="v_prediction"),
        UNET,
    ),
    "diffusion_ddim_sample_linear": (
        dict(
            name="diffusion", sampler="ddim", eta=0.5, prediction_type="sample", schedule="linear"
        ),
        UNET,
    ),
    "flow_euler_beta": (
        dict(name="flow", integrator="euler", time_distribution="beta", time_scale=100.0),
        UNET,
    ),
    "flow_heun_uniform_noclip": (
        dict(name="flow", integrator="heun", time_distribution="uniform", clip_sample=False),
        UNET,
    ),
    "flow_midpoint": (dict(name="flow", integrator="midpoint", time_scale=1.0), UNET),
    "regression": (dict(name="regression"), UNET),
    # Distillation: the teacher (`_objective` binds the tiny U-Net's own weights) is named
    # by teacher_workdir; the student samples in the teacher's parameterization.
    "consistency_flow": (
        dict(name="consistency", teacher_workdir="t", parameterization="flow", num_teacher_steps=8),
        UNET,
    ),
    "shortcut": (dict(name="shortcut", max_steps_log2=3), {**UNET, "step_input": True}),
    "consistency_diffusion_v_online": (
        dict(
            name="consistency",
            teacher_workdir="t",
            parameterization="diffusion",
            num_train_steps=20,
            prediction_type="v_prediction",
            num_teacher_steps=4,
            target="online",
        ),
        UNET,
    ),
    "tokens_greedy": (dict(name="tokens", num_bins=16), TOKEN_HEAD),
    "tokens_temperature": (dict(name="tokens", num_bins=16, temperature=0.7), TOKEN_HEAD),
}
# Objectives whose draws do not depend on the key.
DETERMINISTIC = {"regression", "tokens_greedy"}


def _observation():
    rng = np.random.default_rng(0)
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((B, T), bool),
    }


def _batch(obs):
    rng = np.random.default_rng(1)
    mask = np.ones((B, H), bool)
    mask[0, 10:] = False
    return {
        **obs,
        schema.ACTIONS: jnp.asarray(rng.uniform(-1, 1, size=(B, H, A)), jnp.float32),
        schema.ACTION_PAD_MASK: jnp.asarray(mask),
    }


_MODELS = {}


def _model(model_config: dict):
    """(apply_fn, params) of a tiny model, built once per model config."""
    key = repr(sorted(model_config.items()))
    if key not in _MODELS:
        model = models.create_model(ml_collections.ConfigDict(model_config))
        params = models.init_params(model, jax.random.key(0), _observation(), (H, A))
        _MODELS[key] = (models.make_apply_fn(model), params)
    return _MODELS[key]


def _objective(name: str) -> objectives.Objective:
    config = ml_collections.ConfigDict(dict(CONFIGS[name][0], num_sample_steps=NUM_STEPS))
    teacher = None
    if "teacher_workdir" in CONFIGS[name][0]:
        teacher = objectives.Teacher(*_model(CONFIGS[name][1]))
    return objectives.create_objective(config, (H, A), teacher=teacher)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_objective_contract(name):
    objective = _objective(name)
    apply_fn, params = _model(CONFIGS[name][1])
    obs = _observation()
    assert isinstance(objective, objectives.Objective)

    # Loss: scalar float32, finite, differentiable under jit.
    loss_and_grad = jax.jit(
        jax.value_and_grad(lambda p, b, r: objective.loss(apply_fn, p, b, r), has_aux=True)
    )
    (value, aux), grads = loss_and_grad(params, _batch(obs), jax.random.key(1))
    chex.assert_shape(value, ())
    chex.assert_type(value, jnp.float32)
    chex.assert_tree_all_finite((value, aux, grads))
    assert all(np.shape(v) == () for v in aux.values())
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads))

    # Sample: [B, H, A] float32, finite, same seed → same output, one compilation.
    sample = jax.jit(lambda p, o, r: objective.sample(apply_fn, p, o, r, NUM_STEPS))
    a = sample(params, obs, jax.random.key(2))
    b = sample(params, obs, jax.random.key(2))
    c = sample(params, obs, jax.random.key(3))
    chex.assert_shape(a, (B, H, A))
    chex.assert_type(a, jnp.float32)
    chex.assert_tree_all_finite(a)
    np.testing.assert_array_equal(a, b)
    assert sample._cache_size() == 1
    if name not in DETERMINISTIC:
        assert not np.allclose(a, c)
    # The batch size follows the observation.
    one = {k: v[:1] for k, v in obs.items()}
    chex.assert_shape(sample(params, one, jax.random.key(2)), (1, H, A))

    # What results and tables report.
    summary = objective.summary()
    assert summary["objective"] == CONFIGS[name][0]["name"]
    assert isinstance(summary["sampler"], str) and summary["sampler"]
    assert set(objective.sampling_settings) <= objectives.SAMPLING_FIELDS


class SampleVariantsTest(chex.TestCase):
    """chex variants: loss and sampler are pure functions, so jit changes nothing."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("diffusion_ddim", "flow_euler_beta", "tokens_temperature")
    def test_same_with_and_without_jit(self, name):
        objective = _objective(name)
        apply_fn, params = _model(CONFIGS[name][1])
        obs = _observation()
        reference = jax.jit(lambda p, o, r: objective.sample(apply_fn, p, o, r, NUM_STEPS))
        sample = self.variant(lambda p, o, r: objective.sample(apply_fn, p, o, r, NUM_STEPS))
        np.testing.assert_allclose(
            sample(params, obs, jax.random.key(5)),
            reference(params, obs, jax.random.key(5)),
            atol=1e-5,
        )
        loss = self.variant(lambda p, b, r: objective.loss(apply_fn, p, b, r)[0])
        np.testing.assert_allclose(
            loss(params, _batch(obs), jax.random.key(6)),
            jax.jit(lambda p, b, r: objective.loss(apply_fn, p, b, r)[0])(
                params, _batch(obs), jax.random.key(6)
            ),
            rtol=1e-5,
        )


def test_capabilities_replace_name_checks():
    """Guided (RTC) sampling is flow's capability, quantization error the tokens'; the
    guided sampler is bound with the same sampler settings, and zero weights reproduce
    `sample` exactly."""
    capable = {n for n in CONFIGS if _objective(n).supports_guided_sampling}
    assert capable == {n for n in CONFIGS if n.startswith("flow")}
    assert {n for n in CONFIGS if _objective(n).representation_error is not None} == {
        n for n in CONFIGS if n.startswith("tokens")
    }
    objective = _objective("flow_heun_uniform_noclip")
    apply_fn, params = _model(UNET)
    obs = _observation()
    prefix = jnp.ones((B, H, A), jnp.float32) * 3.0
    plain = objective.sample(apply_fn, params, obs, jax.random.key(4), NUM_STEPS)
    guided = objective.sample_guided(
        apply_fn, params, obs, jax.random.key(4), NUM_STEPS, prefix, jnp.zeros((B, H))
    )
    np.testing.assert_allclose(guided, plain, atol=1e-6)
    pulled = objective.sample_guided(
        apply_fn, params, obs, jax.random.key(4), NUM_STEPS, prefix, jnp.ones((B, H))
    )
    # No clip (bound from the config): the guided chunk moves towards the prefix, past 1.
    assert float(jnp.max(pulled)) > 1.0
    error = _objective("tokens_greedy").representation_error(
        np.array([[0.0, 1.0], [0.5, 2.0]]), {"min": [0.0, 0.0], "max": [1.0, 2.0]}, "minmax"
    )
    assert 0 < error["quantization_error_raw"] <= error["quantization_error_raw_max"]


@pytest.mark.parametrize(
    "name",
    [
        "diffusion_ddim",
        "diffusion_ddpm_v",
        "flow_euler_beta",
        "flow_midpoint",
        "consistency_flow",
        "consistency_diffusion_v_online",
        "shortcut",
    ],
)
def test_sample_from_given_noise(name):
    """Every objective that carries noise to a chunk can start from given noise; `sample`
    is exactly that with its own draw (diffusion and consistency draw the noise with the
    first key of split(key) and pass the second on; flow and shortcut use the key itself),
    and the deterministic samplers (DDIM η = 0, flow, shortcut) depend on nothing else."""
    objective = _objective(name)
    apply_fn, params = _model(CONFIGS[name][1])
    obs = _observation()
    key = jax.random.key(8)
    init_key, steps_key = jax.random.split(key)
    splits_key = name.startswith(("diffusion", "consistency"))
    noise = jax.random.normal(init_key if splits_key else key, (B, H, A), jnp.float32)
    from_noise = jax.jit(
        lambda r, n: objective.sample_from_noise(apply_fn, params, obs, r, NUM_STEPS, n)
    )
    rng = steps_key if splits_key else key
    np.testing.assert_allclose(
        from_noise(rng, noise),
        objective.sample(apply_fn, params, obs, key, NUM_STEPS),
        atol=1e-5,  # jit vs eager rounding
    )
    # DDPM and multistep consistency (re-noising between steps) draw more noise from rng.
    if name not in ("diffusion_ddpm_v", "consistency_flow", "consistency_diffusion_v_online"):
        np.testing.assert_array_equal(from_noise(rng, noise), from_noise(jax.random.key(0), noise))
    else:
        assert not np.allclose(from_noise(rng, noise), from_noise(jax.random.key(0), noise))
    assert not np.allclose(from_noise(rng, noise), from_noise(rng, noise + 1.0))
    with pytest.raises(ValueError, match="noise shape"):
        objective.sample_from_noise(apply_fn, params, obs, rng, NUM_STEPS, noise[:, :3])
    for other in ("regression", "tokens_greedy"):
        assert _objective(other).sample_from_noise is None


def test_tokens_sampler_refuses_a_model_without_logits():
    """The tokens objective needs logits [B, H, A, V]; a model returning [B, H, A] is a
    clear error at trace time, not a silently wrong chunk."""
    objective = _objective("tokens_greedy")
    apply_fn, params = _model(UNET)
    with pytest.raises(ValueError, match="expected logits"):
        objective.sample(apply_fn, params, _observation(), jax.random.key(0), NUM_STEPS)


def test_create_objective_rejects_unknown():
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.create_objective({"name": "nope"}, (H, A))
    with pytest.raises(ValueError, match="does not take"):
        objectives.create_objective({"name": "diffusion", "shedule": "linear"}, (H, A))
    with pytest.raises(ValueError, match="does not take"):
        objectives.create_objective({"name": "flow", "sampler": "ddim"}, (H, A))


def test_sampling_fields_are_the_sample_only_settings():
    """What a checkpoint may be resumed or evaluated under other values of: fields only
    `sample` reads; anything the loss reads (the schedule, the time sampling) is excluded."""
    assert {"sampler", "eta", "integrator", "clip_sample", "temperature", "num_sample_steps"} <= (
        objectives.SAMPLING_FIELDS
    )
    for trained_on in ("schedule", "prediction_type", "time_scale", "time_distribution"):
        assert trained_on not in objectives.SAMPLING_FIELDS
    assert "action_shape" not in objectives.SAMPLING_FIELDS
