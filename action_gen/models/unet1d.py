"""Diffusion Policy's conditional 1-D temporal U-Net (Chi et al. 2023), in Flax Linen.

A port of `diffusion_policy/model/diffusion/conditional_unet1d.py` (ConditionalUnet1D with
global conditioning, `cond_predict_scale=True`, no local conditioning), channels-last:

  cond = [MLP(sinusoidal(t)), flatten(obs state)]                      [B, E + T*S]
  down level i (dims d_i):  2 x ResBlock(cond) → skip_i → Downsample (not on the last)
  mid:                      2 x ResBlock(cond)
  up level (reversed, skipping the first level): concat(x, skip) → 2 x ResBlock → Upsample
  final:                    Conv1dBlock(d_0) → Conv1d(k=1) to A

With camera images in the observation (`observation/image/<camera>` [B, T, h, w, 3] uint8),
the flattened history is that of per-step features [state_t, f_cam(image_t) for each
camera] (models/resnet.py: ResNet18-GN + spatial softmax per camera, DP's image recipe);
without images the model and its parameter tree are exactly the low-dim ones.

As in DP, the first level's skip is never consumed (the up path has one level fewer than
the down path and every up level upsamples), so H=16 with three levels runs at lengths
16 → 8 → 4 → 8 → 16. H must be divisible by 2^(len(down_dims) - 1).
"""

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.models import layers, resnet, text

CONV_IMPLS = ("matmul", "xla")


class XlaConv1d(nn.Module):
    """`layers.Conv1d` (same parameters, same function) as one `lax.conv_general_dilated`:
    on GPU that is cuDNN's convolution instead of an im2col concat plus a GEMM.

    Attributes: as `layers.Conv1d` (features, kernel_size, strides, padding; no bias
    switch: the U-Net's convolutions all have one).
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        p = k // 2 if self.padding is None else self.padding
        axes = (layers.AXIS_CONV_KERNEL, layers.AXIS_EMBED, layers.AXIS_MLP)
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
        kernel = self.param("kernel", init, (k, x.shape[-1], self.features), jnp.float32)
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],))
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x, kernel, (self.strides,), [(p, p)], dimension_numbers=("NWC", "WIO", "NWC")
        )
        return y + bias


def conv1d(conv_impl: str, features: int, kernel_size: int, **kwargs) -> nn.Module:
    """The U-Net's temporal convolution: `layers.Conv1d` (im2col GEMM) for "matmul",
    `XlaConv1d` for "xla"; both hold a [K, C_in, C_out] kernel and a bias."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; known: {CONV_IMPLS}")
    cls = layers.Conv1d if conv_impl == "matmul" else XlaConv1d
    return cls(features, kernel_size, **kwargs)


class Conv1dBlock(nn.Module):
    """Conv1d → GroupNorm → Mish, over [B, L, C_in] → [B, L, C_out]."""

    features: int
    kernel_size: int
    n_groups: int = 8
    conv_impl: str = "matmul"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv1d(self.conv_impl, self.features, self.kernel_size, name="conv")(x)
        x = layers.group_norm(self.n_groups, name="norm")(x)
        return layers.mish(x)


class ConditionalResidualBlock1D(nn.Module):
    """Conv1dBlock → FiLM(cond) → Conv1dBlock, plus a (1x1-conv) residual.

    Args of __call__:
      x: [B, L, C_in].
      cond: [B, D].
    Returns:
      [B, L, features].
    """

    features: int
    kernel_size: int = 5
    n_groups: int = 8
    cond_predict_scale: bool = True
    conv_impl: str = "matmul"

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        conv = dict(kernel_size=self.kernel_size, n_groups=self.n_groups, conv_impl=self.conv_impl)
        h = Conv1dBlock(self.features, **conv, name="block0")(x)
        h = layers.FiLM(self.cond_predict_scale, name="film")(h, cond)
        h = Conv1dBlock(self.features, **conv, name="block1")(h)
        residual = x
        if x.shape[-1] != self.features:
            residual = layers.Conv1d(self.features, 1, name="residual_conv")(x)
        return h + residual


class ConditionalUnet1D(resnet.ImageObservationModel):
    """DP's ConditionalUnet1D: predicts [B, H, A] from (obs, noisy actions, time).

    Attributes:
      down_dims: channels per level (DP low-dim: (256, 512, 1024), ~65M parameters).
      kernel_size: temporal kernel of the residual blocks (DP: 5).
      n_groups: GroupNorm groups (DP: 8); every entry of down_dims must be divisible by it.
      time_embed_dim: width E of the time embedding (DP's diffusion_step_embed_dim, 256).
      cond_predict_scale: FiLM with scale and bias (True, DP's setting) or bias only.
      image_features, num_keypoints, resnet_width, resnet_blocks, image_crop: inherited
        from resnet.ImageObservationModel (the per-camera image encoder).
      vocab_size, instruction_features, instruction_layers: the instruction encoder
        (models/text.py), used only when the observation has `prompt_tokens` (a
        multi-task policy, `data.prompt_max_len` > 0); its output joins the condition.
      dtype: activation dtype of the image encoder ("bfloat16": bf16 activations, float32
        parameters). At image-policy sizes the ResNet is nearly all of the compute.
      float32_body: True: the 1-D U-Net casts the noisy actions to float32, so it computes
        in float32 whatever it is called with (bf16 parameters are promoted). False: it
        keeps the caller's dtype, so bf16 parameters and inputs (`train.compute_dtype =
        "bfloat16"`, or a sampler fed bf16-cast parameters) run the whole body in bf16
        (GroupNorm statistics stay float32). Same function in float32 either way.
      conv_impl: the temporal convolutions as "matmul" (layers.Conv1d: im2col + one GEMM)
        or "xla" (`lax.conv_general_dilated`, cuDNN on GPU); same parameters and function.
    """

    down_dims: Sequence[int] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    time_embed_dim: int = 256
    cond_predict_scale: bool = True
    vocab_size: int = 259  # the byte tokenizer's (data/tokenizer.py)
    instruction_features: int = 64
    instruction_layers: int = 1
    dtype: str = "float32"
    float32_body: bool = True
    conv_impl: str = "matmul"

    def condition(self, obs: dict, time: jax.Array) -> jax.Array:
        """The global condition [B, E + T*F (+ D)]: time embedding, flattened per-step
        observation features (F = S without images; see the module docstring), and the
        instruction embedding when the observation carries prompt tokens.

        `obs[schema.OBS_PAD_MASK]` is not used: padded steps repeat the first real
        observation (as in DP), so the flattened history is well defined either way.
        """
        state = self.observation_encoder(jnp.dtype(self.dtype))(obs)  # [B, T, F]
        batch = state.shape[0]
        time = jnp.broadcast_to(jnp.asarray(time, jnp.float32), (batch,))
        emb = layers.sinusoidal_embedding(time, self.time_embed_dim)
        emb = layers.MLP((4 * self.time_embed_dim, self.time_embed_dim), name="time_mlp")(emb)
        parts = [emb, state.reshape(batch, -1)]
        instruction = text.encode_instruction(
            obs,
            vocab_size=self.vocab_size,
            features=self.instruction_features,
            num_layers=self.instruction_layers,
        )
        if instruction is not None:
            parts.append(instruction)
        return jnp.concatenate(parts, axis=-1)

    @nn.compact
    def __call__(self, obs: dict, noisy_actions: jax.Array, time: jax.Array) -> jax.Array:
        """Args:
          obs: `schema.OBS_STATE` [B, T, S] float32 (normalized), optional camera images
            `schema.image_key(camera)` [B, T, h, w, 3] uint8, optional instruction
            `schema.PROMPT_TOKENS` / `schema.PROMPT_MASK` [B, L]; other keys ignored.
          noisy_actions: [B, H, A].
          time: [B] (or scalar) float: the diffusion step index k, or a scaled flow time.
        Returns:
          [B, H, A] float32.
        """
        dims = tuple(int(d) for d in self.down_dims)
        batch, horizon, action_dim = layers.check_model_inputs(obs, noisy_actions, time)
        if horizon % 2 ** (len(dims) - 1):
            raise ValueError(f"action horizon {horizon} not divisible by 2^{len(dims) - 1}")
        cond = self.condition(obs, time)
        block = dict(
            kernel_size=self.kernel_size,
            n_groups=self.n_groups,
            cond_predict_scale=self.cond_predict_scale,
            conv_impl=self.conv_impl,
        )

        x = jnp.asarray(noisy_actions, jnp.float32 if self.float32_body else None)
        if not self.float32_body:  # a bf16 condition too, else each FiLM promotes to float32
            cond = cond.astype(x.dtype)
        skips = []
        for i, dim in enumerate(dims):
            x = ConditionalResidualBlock1D(dim, name=f"down{i}_res0", **block)(x, cond)
            x = ConditionalResidualBlock1D(dim, name=f"down{i}_res1", **block)(x, cond)
            skips.append(x)
            if i < len(dims) - 1:
                x = conv1d(
                    self.conv_impl, dim, 3, strides=2, padding=1, name=f"down{i}_downsample"
                )(x)

        for i in range(2):
            x = ConditionalResidualBlock1D(dims[-1], name=f"mid_res{i}", **block)(x, cond)

        # Up levels pair with down levels len-1, ..., 1 (DP never uses the first skip).
        for j, i in enumerate(range(len(dims) - 1, 0, -1)):
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = ConditionalResidualBlock1D(dims[i - 1], name=f"up{j}_res0", **block)(x, cond)
            x = ConditionalResidualBlock1D(dims[i - 1], name=f"up{j}_res1", **block)(x, cond)
            x = layers.ConvTranspose1d(dims[i - 1], 4, 2, 1, name=f"up{j}_upsample")(x)

        x = Conv1dBlock(
            dims[0], self.kernel_size, self.n_groups, self.conv_impl, name="final_block"
        )(x)
        out = layers.Conv1d(action_dim, 1, name="final_conv")(x)
        chex.assert_shape(out, (batch, horizon, action_dim))
        return out
