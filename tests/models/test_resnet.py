"""ResNet18-GN + spatial-softmax image encoder, and the U-Net with image observations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema
from action_gen.models import resnet
from tests.models.model_contract import check_model_contract

TINY_UNET = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}
TINY_IMAGE = dict(
    image_features=8, num_keypoints=4, resnet_width=8, resnet_blocks=(1, 1), image_crop=(12, 12)
)


def _obs(batch=3, horizon=2, state_dim=4, image=16, cameras=("corner2",), seed=0):
    rng = np.random.default_rng(seed)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, horizon, state_dim)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, horizon), bool),
    }
    for camera in cameras:
        obs[schema.image_key(camera)] = jnp.asarray(
            rng.integers(0, 256, (batch, horizon, image, image, 3)), jnp.uint8
        )
    return obs


def test_spatial_softmax_matches_numpy():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    module = resnet.SpatialSoftmax(num_keypoints=4)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(1), x)["params"])
    got = jax.jit(module.apply)({"params": params}, x)
    w, b = (
        np.asarray(params["keypoint_conv"]["kernel"])[0, 0],
        np.asarray(params["keypoint_conv"]["bias"]),
    )
    logits = np.asarray(x) @ w + b  # [2, 5, 7, 4]
    want = np.zeros((2, 4, 2))
    ys, xs = np.linspace(-1, 1, 5), np.linspace(-1, 1, 7)
    for n in range(2):
        for k in range(4):
            p = np.exp(logits[n, :, :, k] - logits[n, :, :, k].max())
            p /= p.sum()
            want[n, k] = [(p.sum(0) * xs).sum(), (p.sum(1) * ys).sum()]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_center_crop():
    images = jnp.arange(2 * 6 * 8 * 3).reshape(2, 6, 8, 3)
    np.testing.assert_array_equal(resnet.center_crop(images, (4, 4)), images[:, 1:5, 2:6])
    assert resnet.center_crop(images, None) is images
    with pytest.raises(ValueError, match="smaller than the crop"):
        resnet.center_crop(images, (7, 4))


def test_resnet18_size_and_image_range():
    encoder = resnet.ResNetImageEncoder()  # ResNet18 width 64, 32 keypoints, 64 features
    images = jnp.zeros((1, 84, 84, 3), jnp.uint8)
    params = jax.eval_shape(lambda k: encoder.init(k, images), jax.random.key(0))["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    # torchvision ResNet18 without its fc: 11.18M; + keypoint conv and Linear(64).
    assert 11.1e6 < count < 11.3e6, count
    out = jax.eval_shape(lambda p: encoder.apply({"params": p}, images), params)
    assert out.shape == (1, 64) and out.dtype == jnp.float32
    # Images are mapped to [-1, 1]: all-black and all-white frames encode differently.
    tiny = resnet.ResNetImageEncoder(
        resnet.ImageEncoderSettings(features=8, num_keypoints=4, width=8, blocks_per_stage=(1,))
    )
    frames = jnp.stack([jnp.zeros((16, 16, 3), jnp.uint8), jnp.full((16, 16, 3), 255, jnp.uint8)])
    variables = jax.jit(tiny.init)(jax.random.key(0), frames)
    out = jax.jit(tiny.apply)(variables, frames)
    assert out.shape == (2, 8) and not np.allclose(out[0], out[1])


def test_unet_with_images_contract_bf16_and_separate_encoders():
    config = dict(TINY_UNET, dtype="bfloat16", **TINY_IMAGE)
    obs = _obs(cameras=("corner2", "wrist"))
    _, params, out = check_model_contract(config, obs, objective_names=("diffusion",))
    encoders = params["obs_encoder"]
    assert set(encoders) == {"image_encoder_corner2", "image_encoder_wrist"}  # one per camera
    # bf16 activations, float32 parameters.
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    # The output depends on the images, and the encoder center-crops larger frames.
    apply_fn = jax.jit(models.make_apply_fn(models.create_model(ml_collections.ConfigDict(config))))
    x = jax.random.normal(jax.random.key(1), (3, 16, 2))
    t = jnp.linspace(0.0, 99.0, 3)
    flipped = {**obs, schema.image_key("wrist"): obs[schema.image_key("wrist")][:, :, ::-1]}
    assert not np.allclose(apply_fn(params, flipped, x, t), out)
    cropped = {
        k: (v[:, :, 2:14, 2:14] if k.startswith(schema.OBS_IMAGE_PREFIX) else v)
        for k, v in obs.items()
    }
    np.testing.assert_allclose(apply_fn(params, cropped, x, t), out, rtol=1e-5, atol=1e-5)


def test_state_only_unet_param_tree_unchanged():
    model = models.create_model(ml_collections.ConfigDict(TINY_UNET))
    obs = _obs(cameras=())
    params = jax.eval_shape(lambda k: models.init_params(model, k, obs, (16, 2)), jax.random.key(0))
    assert "obs_encoder" not in params
    assert params["down0_res0"]["film"]["cond_encoder"]["kernel"].shape == (16 + 2 * 4, 32)


def test_masked_camera_contributes_zero_features():
    """`image_mask/<camera>` False (a camera slot this robot lacks) zeroes that camera's
    features: the sample's output no longer depends on the frame, the others' still do."""
    settings = resnet.ImageEncoderSettings(
        features=8, num_keypoints=4, width=8, blocks_per_stage=(1,)
    )
    encoder = resnet.ObservationEncoder(settings)
    obs = _obs(batch=2, cameras=("primary", "wrist"))
    obs[schema.image_mask_key("wrist")] = jnp.array([True, False])
    variables = jax.jit(encoder.init)(jax.random.key(0), obs)
    out = jax.jit(encoder.apply)(variables, obs)
    state_dim, features = 4, 8
    wrist = out[..., state_dim + features :]
    assert np.all(np.asarray(wrist[1]) == 0.0) and np.any(np.asarray(wrist[0]) != 0.0)
    changed = {**obs, schema.image_key("wrist"): 255 - obs[schema.image_key("wrist")]}
    out2 = jax.jit(encoder.apply)(variables, changed)
    np.testing.assert_array_equal(out2[1], out[1])  # masked: the frame does not matter
    assert not np.allclose(out2[0], out[0])  # unmasked: it does
