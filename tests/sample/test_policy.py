"""`Policy`: restore from a checkpoint, ahead-of-time programs per batch size (padding and
splitting odd batches), guided (RTC) sampling with explicit arguments, a π0 policy whose
production sampler runs the prefix once per chunk, and clear errors on bad observations."""

import jax
import numpy as np
import pytest
from jax.extend import core as jax_core

from action_gen import checkpoint, compat, models
from action_gen.data import schema, spec
from action_gen.sample.policy import Policy
from configs import diffusion_unet_obstacle, flow_pi0_obstacle
from tests.serve import tiny_policy

STATE_DIM, ACTION_DIM = tiny_policy.STATE_DIM, tiny_policy.ACTION_DIM


def _params(config, seed=0):
    model = models.create_model(config.model)
    example = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))
    action_shape = (config.data.action_horizon, spec.model_action_dim(config.model, ACTION_DIM))
    return models.init_params(model, jax.random.key(seed), example, action_shape)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint written with the real format: (workdir, config, ema params)."""
    config = diffusion_unet_obstacle.get_config("runlocal")
    params, ema = _params(config, 0), _params(config, 1)
    workdir = tmp_path_factory.mktemp("policy")
    manager = checkpoint.create_checkpoint_manager(str(workdir / "checkpoints"), async_save=False)
    state = jax.device_put({"step": np.int32(3), "params": params, "ema_params": ema})
    checkpoint.save_checkpoint(
        manager,
        3,
        state,
        config=compat.config_to_json_dict(config),
        norm_stats=tiny_policy.norm_stats(),
        data_state={"batches_consumed": 3},
    )
    manager.wait_until_finished()
    return str(workdir), config, ema, params


def test_restore_reads_config_stats_and_ema_params(saved):
    workdir, config, ema, params = saved
    policy = Policy.from_checkpoint(workdir)
    assert policy.norm_stats == tiny_policy.norm_stats()
    assert list(policy.config.model.down_dims) == list(config.model.down_dims)
    assert policy.action_shape == (config.data.action_horizon, ACTION_DIM)
    for got, want in zip(jax.tree.leaves(policy.params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(got, want)
    raw = Policy.from_checkpoint(workdir, use_ema=False)
    for got, want in zip(jax.tree.leaves(raw.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)


def test_restore_under_another_config_refuses_what_the_checkpoint_fixes(saved):
    workdir, config, _, _ = saved
    sampling = diffusion_unet_obstacle.get_config("runlocal")
    sampling.objective.sampler = "ddpm"
    sampling.objective.num_sample_steps = 5
    policy = Policy.from_checkpoint(workdir, config=sampling)
    assert policy.objective.sampler_label == "ddpm" and policy.num_sample_steps == 5
    for key, change in {
        "model.down_dims": ("model", "down_dims", (8, 16)),
        "objective.prediction_type": ("objective", "prediction_type", "sample"),
        "data.action_horizon": ("data", "action_horizon", 8),
        "data.state_norm": ("data", "state_norm", "meanstd"),
    }.items():
        changed = diffusion_unet_obstacle.get_config("runlocal")
        section, field, value = change
        setattr(changed[section], field, value)
        with pytest.raises(ValueError, match=key):
            Policy.from_checkpoint(workdir, config=changed)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Policy.from_checkpoint(workdir + "/nowhere")


def test_aot_programs_pad_and_split_odd_batches():
    policy = tiny_policy.make_tiny_policy(seed=3)
    policy.compile((1, 4))
    assert policy.compiled_batch_sizes == (1, 4)
    jit_programs = policy._sample._cache_size()
    obs = tiny_policy.observation(9, seed=2)
    key = jax.random.key(11)
    # Batch 3 runs the batch-4 program on the last row repeated, sliced back.
    padded = {k: np.concatenate([v[:3], v[2:3]]) for k, v in obs.items()}
    three = policy.sample_actions({k: v[:3] for k, v in obs.items()}, key)
    np.testing.assert_allclose(three, policy.sample_actions(padded, key)[:3], atol=1e-6)
    # Batch 9 > 4 is split into 4 + 4 + 1, each piece with its own folded key.
    nine = policy.sample_actions(obs, key)
    pieces = [
        policy.sample_actions({k: v[i : i + 4] for k, v in obs.items()}, jax.random.fold_in(key, i))
        for i in (0, 4, 8)
    ]
    np.testing.assert_allclose(nine, np.concatenate(pieces), atol=1e-6)
    assert nine.shape == (9, *policy.action_shape)
    assert policy._sample._cache_size() == jit_programs  # no request compiled anything


def test_rtc_takes_explicit_arguments_on_aot_and_jit_paths():
    policy = tiny_policy.make_tiny_policy(seed=4)
    assert policy.supports_rtc and policy.objective.supports_guided_sampling
    horizon = policy.action_horizon
    obs = tiny_policy.observation(3, seed=5)
    prefix = np.full((3, *policy.action_shape), 0.5, np.float32)
    plain = policy.sample_actions(obs, 7)
    jit_zero = policy.sample_actions_rtc(obs, 7, prefix=prefix, prefix_weights=np.zeros(horizon))
    np.testing.assert_allclose(jit_zero, plain, atol=1e-5)
    policy.compile((4,))
    aot_zero = policy.sample_actions_rtc(obs, 7, prefix=prefix, prefix_weights=np.zeros(horizon))
    np.testing.assert_allclose(aot_zero, policy.sample_actions(obs, 7), atol=1e-5)
    # Another β than the AOT programs' runs on the jitted function.
    other = policy.sample_actions_rtc(
        obs, 7, prefix=prefix, prefix_weights=np.ones(horizon), max_guidance=2.0
    )
    assert other.shape == (3, *policy.action_shape)
    with pytest.raises(ValueError, match="prefix shape"):
        policy.sample_actions_rtc(obs, 7, prefix=prefix[:2], prefix_weights=np.ones(horizon))
    with pytest.raises(ValueError, match="prefix_weights shape"):
        policy.sample_actions_rtc(obs, 7, prefix=prefix, prefix_weights=np.ones(horizon + 1))


def test_rtc_refused_without_guided_sampling(saved):
    policy = Policy.from_checkpoint(saved[0])
    assert not policy.supports_rtc
    obs = tiny_policy.observation(1)
    prefix = np.zeros((1, *policy.action_shape), np.float32)
    with pytest.raises(ValueError, match="guided sampling"):
        policy.sample_actions_rtc(obs, 0, prefix=prefix, prefix_weights=np.ones(1))


def test_wrong_observations_are_named():
    policy = tiny_policy.make_tiny_policy()
    with pytest.raises(KeyError, match="observation/state"):
        policy.sample_actions({"state": np.zeros((1, 2, STATE_DIM))}, 0)
    with pytest.raises(ValueError, match=r"observation/state.*\[B, T, S\]"):
        policy.sample_actions({"observation/state": np.zeros((2, STATE_DIM))}, 0)
    with pytest.raises(ValueError, match=r"observation/state.*\(1, 2, 4\)"):
        policy.sample_actions({"observation/state": np.zeros((1, 2, 4))}, 0)
    with pytest.raises(ValueError, match="obs_pad_mask"):
        policy.sample_actions(
            {"observation/state": np.zeros((2, 2, STATE_DIM)), "obs_pad_mask": np.ones((1, 2))},
            0,
        )


def _count_patch_embeddings(jaxpr, patch_features: int, in_loop=False, counts=None):
    """{"outside": n, "inside": n}: the ViT's patch-embedding matmuls (one per ViT pass,
    which takes every camera at once), outside and inside the sampler's loops."""
    counts = counts if counts is not None else {"outside": 0, "inside": 0}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs = eqn.invars[0].aval
            contracting = eqn.params["dimension_numbers"][0][0]
            if any(lhs.shape[d] == patch_features for d in contracting):
                counts["inside" if in_loop else "outside"] += 1
        loop = in_loop or eqn.primitive.name in ("scan", "while")
        for sub in jax_core.jaxprs_in_params(eqn.params):
            _count_patch_embeddings(sub, patch_features, loop, counts)
    return counts


def test_pi0_policy_runs_the_prefix_once_per_chunk():
    """The production sampler (the Policy's jitted program, RTC's too) computes the image
    encoder and backbone once per chunk: no patch embedding inside the integration loop."""
    from action_gen.models import pi0

    config = flow_pi0_obstacle.get_config("smoke")
    config.data.cameras = {"base_0_rgb": [32, 32], "left_wrist_0_rgb": [32, 32]}
    policy = Policy(config, _params(config), tiny_policy.norm_stats())
    size = pi0.SIZES[config.model.variant]
    patch_features = size.patch_size**2 * 3
    obs = spec.example_observation(policy.model_observation_spec, 2)
    key = jax.random.key(0)
    counts = _count_patch_embeddings(
        jax.make_jaxpr(policy._sample)(policy.params, obs, key).jaxpr, patch_features
    )
    # One ViT pass over both cameras (camera-major batch), before the loop.
    assert counts == {"outside": 1, "inside": 0}, counts
    prefix = np.zeros((2, policy.action_horizon, policy.model_action_dim), np.float32)
    weights = np.ones((2, policy.action_horizon), np.float32)
    guided = jax.make_jaxpr(lambda *a: policy._sample_rtc(*a, max_guidance=5.0))(
        policy.params, obs, key, prefix, weights
    )
    assert _count_patch_embeddings(guided.jaxpr, patch_features) == {"outside": 1, "inside": 0}
    raw = {
        schema.OBS_STATE: np.zeros((2, config.data.obs_horizon, STATE_DIM), np.float32),
        "observation/image/base_0_rgb": np.zeros((2, config.data.obs_horizon, 32, 32, 3), np.uint8),
        "observation/image/left_wrist_0_rgb": np.zeros(
            (2, config.data.obs_horizon, 32, 32, 3), np.uint8
        ),
        schema.PROMPT: np.array(["go around the left", "go around the right"]),
    }
    actions = policy.sample_actions(raw, 0)
    assert actions.shape == (2, *policy.action_shape) and np.isfinite(actions).all()
    with pytest.raises(ValueError, match="observation/image/base_0_rgb"):
        policy.sample_actions({**raw, "observation/image/base_0_rgb": raw[schema.OBS_STATE]}, 0)
