"""Diffusion Policy's image encoder: ResNet18 with GroupNorm, spatial-softmax keypoints.

DP (Chi et al. 2023, sec. 3.2 / robomimic's VisualCore) per camera, random init:

  x = image / 127.5 - 1                                 uint8 [h, w, 3] -> [-1, 1]
  x = center_crop(x, image_crop)                        eval; training batches arrive
                                                        randomly cropped (data/augment.py)
  stem:   Conv7x7/2(w) -> GN -> ReLU -> MaxPool3x3/2
  stages: 4 x 2 BasicBlocks, widths w, 2w, 4w, 8w, strides 1, 2, 2, 2
          BasicBlock(x) = ReLU(GN(Conv3x3(ReLU(GN(Conv3x3(x))))) + proj(x))
  keypoints = SpatialSoftmax(num_keypoints)             [K, 2]
  features  = Dense(image_features)(flatten(keypoints))

BatchNorm is replaced by GroupNorm with C / 16 groups (DP's `replace_bn_with_gn`): batch
statistics interact badly with the EMA weights used at inference. Each camera has its own
encoder (no weight sharing), as in DP.

Spatial softmax (Levine et al. 2016): for each of K keypoint maps a_k = Conv1x1(features),
  p_k(i, j) = softmax_{i,j}(a_k(i, j)),   keypoint_k = sum_{i,j} p_k(i, j) (x_j, y_i)
with pixel-center coordinates x, y in [-1, 1]: the expected image location of feature k.
It has no parameters that depend on the image size, so one encoder runs at any size.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.data import schema
from action_gen.models import layers

# Logical axis names (the U-Net's convention: "embed" in, "mlp" out).
_CONV_AXES = (None, None, layers.AXIS_EMBED, layers.AXIS_MLP)


def _conv(features: int, kernel: int, stride: int, dtype, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(kernel // 2, kernel // 2)] * 2,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(2.0, "fan_out", "normal"), _CONV_AXES
        ),
        name=name,
    )


def _group_norm(channels: int, dtype, name: str) -> nn.GroupNorm:
    return layers.group_norm(max(1, channels // 16), name, dtype)  # DP: C / 16 groups


class BasicBlock(nn.Module):
    """ResNet's 2 x Conv3x3 block with GroupNorm, [N, h, w, C_in] -> [N, h/s, w/s, C]."""

    features: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.features, 3, self.stride, self.dtype, "conv0")(x)
        h = nn.relu(_group_norm(self.features, self.dtype, "norm0")(h))
        h = _conv(self.features, 3, 1, self.dtype, "conv1")(h)
        h = _group_norm(self.features, self.dtype, "norm1")(h)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.stride, self.dtype, "proj_conv")(x)
            x = _group_norm(self.features, self.dtype, "proj_norm")(x)
        return nn.relu(h + x)


class SpatialSoftmax(nn.Module):
    """[N, h, w, C] -> [N, K, 2] expected (x, y) in [-1, 1] of K learned feature maps."""

    num_keypoints: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, _ = x.shape
        logits = nn.Conv(
            self.num_keypoints,
            (1, 1),
            dtype=x.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), _CONV_AXES),
            bias_init=nn.with_logical_partitioning(
                nn.initializers.zeros_init(), (layers.AXIS_MLP,)
            ),
            name="keypoint_conv",
        )(x)
        # The softmax and the expectation in float32: bf16 sums over h*w positions drift.
        logits = logits.astype(jnp.float32).reshape(n, h * w, self.num_keypoints)
        prob = jax.nn.softmax(logits, axis=1)  # [N, h*w, K]
        ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
        grid = jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)  # [h*w, 2]
        return jnp.einsum("npk,pd->nkd", prob, grid)


def center_crop(images: jax.Array, crop: Sequence[int] | None) -> jax.Array:
    """Central [ch, cw] window of [..., h, w, C] images (unchanged when already that size)."""
    if not crop:
        return images
    ch, cw = (int(c) for c in crop)
    h, w = images.shape[-3], images.shape[-2]
    if h < ch or w < cw:
        raise ValueError(f"image {h}x{w} is smaller than the crop {ch}x{cw}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[..., top : top + ch, left : left + cw, :]


@dataclasses.dataclass(frozen=True)
class ImageEncoderSettings:
    """The per-camera image encoder's settings, in one place.

    Attributes:
      features: output width per camera (DP / robomimic: 64).
      num_keypoints: spatial-softmax keypoints K (DP: 32).
      width: stem width w (ResNet18: 64); stages use w, 2w, 4w, 8w.
      blocks_per_stage: (2, 2, 2, 2) is ResNet18.
      image_crop: (h, w) center crop applied first (None: no crop).
      dtype: activation dtype (parameters stay float32).
    """

    features: int = 64
    num_keypoints: int = 32
    width: int = 64
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    image_crop: tuple[int, int] | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):  # hashable (a Flax attribute): config lists become tuples
        object.__setattr__(self, "blocks_per_stage", tuple(int(b) for b in self.blocks_per_stage))
        if self.image_crop is not None:
            object.__setattr__(self, "image_crop", tuple(int(c) for c in self.image_crop))
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))


class ImageObservationModel(nn.Module):
    """Base of the action models that take camera images: the image-encoder fields of
    the model config (flat, `model.image_features` etc.) declared once, and the
    observation encoder built from them.

    Attributes:
      image_features, num_keypoints, resnet_width, resnet_blocks, image_crop: the
        ImageEncoderSettings `features`, `num_keypoints`, `width`, `blocks_per_stage`,
        `image_crop`; used only when the observation has images.
    """

    image_features: int = 64
    num_keypoints: int = 32
    resnet_width: int = 64
    resnet_blocks: Sequence[int] = (2, 2, 2, 2)  # ResNet18
    image_crop: Sequence[int] | None = None

    def observation_encoder(self, dtype) -> "ObservationEncoder":
        """The `obs_encoder` submodule (call from a compact method): obs -> [B, T, F]."""
        settings = ImageEncoderSettings(
            features=self.image_features,
            num_keypoints=self.num_keypoints,
            width=self.resnet_width,
            blocks_per_stage=self.resnet_blocks,
            image_crop=self.image_crop,
            dtype=dtype,
        )
        return ObservationEncoder(settings, name="obs_encoder")


class ResNetImageEncoder(nn.Module):
    """One camera's encoder: uint8 [N, h, w, 3] -> [N, settings.features]."""

    settings: ImageEncoderSettings = ImageEncoderSettings()

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, h, w, 3], got {images.shape}")
        cfg = self.settings
        x = center_crop(images, cfg.image_crop)
        x = (x.astype(jnp.float32) / 127.5 - 1.0).astype(cfg.dtype)
        x = _conv(cfg.width, 7, 2, cfg.dtype, "stem_conv")(x)
        x = nn.relu(_group_norm(cfg.width, cfg.dtype, "stem_norm")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(cfg.blocks_per_stage):
            width = cfg.width * 2**stage
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, stride, cfg.dtype, name=f"stage{stage}_block{block}")(x)
        keypoints = SpatialSoftmax(cfg.num_keypoints, name="spatial_softmax")(x)
        flat = keypoints.reshape(keypoints.shape[0], -1).astype(cfg.dtype)
        out = layers.dense(cfg.features, dtype=cfg.dtype, name="out")(flat)
        return out.astype(jnp.float32)


def camera_names(obs: dict) -> list[str]:
    """Cameras present in an observation dict, sorted (a fixed encoder order)."""
    return sorted(
        k.removeprefix(schema.OBS_IMAGE_PREFIX)
        for k in obs
        if k.startswith(schema.OBS_IMAGE_PREFIX)
    )


class ObservationEncoder(nn.Module):
    """Per-step observation features: [B, T, S + num_cameras * features].

    The state history [B, T, S] concatenated with each camera's encoding of its [B, T, h, w,
    3] image history (one ResNetImageEncoder per camera, named `image_encoder_<camera>`,
    applied to all B*T frames at once). An optional `image_mask/<camera>` [B] bool zeroes
    that camera's features where False (a camera slot the robot lacks in a mixture; the
    frame itself is black). Without images it returns the state unchanged (no parameters),
    so state-only models keep their parameter tree.
    """

    settings: ImageEncoderSettings = ImageEncoderSettings()

    @nn.compact
    def __call__(self, obs: dict) -> jax.Array:
        state = jnp.asarray(obs[schema.OBS_STATE], jnp.float32)
        batch, horizon = state.shape[:2]
        parts = [state]
        for camera in camera_names(obs):
            images = jnp.asarray(obs[schema.image_key(camera)])
            if images.shape[:2] != (batch, horizon):
                raise ValueError(
                    f"{schema.image_key(camera)} has shape {images.shape}; want [B={batch}, "
                    f"T={horizon}, h, w, 3] like {schema.OBS_STATE}"
                )
            encoder = ResNetImageEncoder(self.settings, name=f"image_encoder_{camera}")
            flat = encoder(images.reshape(batch * horizon, *images.shape[2:]))
            features = flat.reshape(batch, horizon, -1)
            mask = obs.get(schema.image_mask_key(camera))
            if mask is not None:  # a camera this robot lacks contributes zeros, not a black frame
                mask = jnp.asarray(mask, bool).reshape(batch, 1, 1)
                features = jnp.where(mask, features, jnp.zeros_like(features))
            parts.append(features)
        return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else state
