"""DP-T (transformer denoiser): the model contract, masks, and the image path."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema
from tests.models.model_contract import check_model_contract

TINY = {"name": "transformer", "embed_dim": 32, "num_layers": 2, "num_heads": 4}
TINY_IMAGE = dict(
    image_features=8, num_keypoints=4, resnet_width=8, resnet_blocks=(1, 1), image_crop=(12, 12)
)


def _obs(batch=3, horizon=2, state_dim=5, seed=0, image=None):
    rng = np.random.default_rng(seed)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, horizon, state_dim)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, horizon), bool),
    }
    if image:
        obs[schema.image_key("corner2")] = jnp.asarray(
            rng.integers(0, 256, (batch, horizon, image, image, 3)), jnp.uint8
        )
    return obs


def test_contract_state_only():
    model, params, _ = check_model_contract(TINY, _obs(), objective_names=("diffusion", "flow"))
    assert isinstance(model, models.MODELS["transformer"])
    assert set(params) >= {"input_emb", "pos_emb", "cond_pos_emb", "block0", "block1", "head"}
    assert set(params["block0"]) >= {"self_attn", "cross_attn", "ff_in", "ff_out"}
    assert "obs_encoder" not in params  # no images: no encoder parameters


def test_contract_with_images_and_bf16():
    config = dict(TINY, num_layers=1, dtype="bfloat16", **TINY_IMAGE)
    # The objectives with images run in test_resnet.py (U-Net); here the forward contract.
    _, params, _ = check_model_contract(config, _obs(image=16), objective_names=())
    encoder = params["obs_encoder"]["image_encoder_corner2"]
    assert encoder["stem_conv"]["kernel"].dtype == jnp.float32  # fp32 params, bf16 activations


def test_causal_attention_and_dp_memory_mask():
    """Action token h must not depend on noisy actions after h (causal self-attention), and
    with DP's memory mask token 0 must not see the latest observation step."""
    model = models.create_model(ml_collections.ConfigDict(TINY))
    obs = _obs()
    params = models.init_params(model, jax.random.key(0), obs, (8, 2))
    x = jax.random.normal(jax.random.key(1), (3, 8, 2))
    t = jnp.zeros(3)
    out = model.apply({"params": params}, obs, x, t)
    x2 = x.at[:, 5:].add(1.0)
    out2 = model.apply({"params": params}, obs, x2, t)
    np.testing.assert_allclose(out2[:, :5], out[:, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out2[:, 5:], out[:, 5:])
    obs_late = {**obs, schema.OBS_STATE: obs[schema.OBS_STATE].at[:, 1].add(1.0)}
    out3 = model.apply({"params": params}, obs_late, x, t)
    np.testing.assert_allclose(out3[:, 0], out[:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out3[:, 1:], out[:, 1:])


def test_bad_heads_rejected():
    model = models.create_model(ml_collections.ConfigDict(dict(TINY, num_heads=5)))
    with pytest.raises(ValueError, match="num_heads"):
        models.init_params(model, jax.random.key(0), _obs(), (8, 2))
