"""Diffusion Policy's transformer denoiser (DP-T, Chi et al. 2023), in Flax Linen.

A port of `diffusion_policy/model/diffusion/transformer_for_diffusion.py`
(TransformerForDiffusion with obs_as_cond=True, n_cond_layers=0), channels-last:

  action tokens  x_h = W_in a_h + p_h                        [B, H, D]  (learned p)
  cond tokens    c  = [sinusoidal_D(t), W_o o_1, ..., W_o o_T] + q    [B, 1+T, D]  (learned q)
                 c  = MLP(c)  (Linear 4D -> Mish -> Linear D, DP's cond encoder)
  n_layers x pre-norm decoder block:
                 x += SelfAttn(LN(x), causal)           action token h sees tokens <= h
                 x += CrossAttn(LN(x), c, memory mask)  token h sees c_s for s <= h + 1
                 x += FF_gelu(LN(x))                    (4D hidden)
  out            W_out LN(x)                                [B, H, A]

The memory mask is DP's (`t >= s - 1`): the time token is visible to every action token and
observation step s to action tokens h >= s - 1, which makes early actions depend only on
early observations (`causal_obs_attention=False` lets every token see every observation).
o_t is the per-step observation feature: the state, plus per-camera ResNet features when
the observation has images (models/resnet.py). DP's dropout (attention 0.3 / embedding 0)
is not used: the model contract has no train/eval switch and no dropout RNG.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.models import layers, resnet, text

# DP initializes every Linear and attention projection with N(0, 0.02) and zero bias.
_INIT = layers.small_normal_init
_OUT_AXES = (layers.AXIS_MLP, layers.AXIS_EMBED)  # a projection back to the token width
_IN_AXES = (None, layers.AXIS_EMBED)  # from raw inputs (actions, observation features)


class DecoderBlock(nn.Module):
    """Pre-norm transformer decoder layer (PyTorch `norm_first=True`, GELU feed-forward)."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, memory, self_mask, memory_mask):
        width = x.shape[-1]
        dt = self.dtype
        h = layers.layer_norm(dt, "norm_self")(x)
        x = x + layers.attention(self.num_heads, dt, "self_attn", _INIT)(h, h, mask=self_mask)
        h = layers.layer_norm(dt, "norm_cross")(x)
        cross = layers.attention(self.num_heads, dt, "cross_attn", _INIT)
        x = x + cross(h, memory, mask=memory_mask)
        h = layers.layer_norm(dt, "norm_ff")(x)
        h = layers.dense(4 * width, dtype=dt, kernel_init=_INIT, name="ff_in")(h)
        h = layers.dense(width, _OUT_AXES, dtype=dt, kernel_init=_INIT, name="ff_out")(nn.gelu(h))
        return x + h


class TransformerForDiffusion(resnet.ImageObservationModel):
    """DP-T: predicts [B, H, A] from (obs, noisy actions, time), like the U-Net.

    Attributes:
      embed_dim: token width D (DP: 256).
      num_layers: decoder blocks (DP: 8).
      num_heads: attention heads (DP: 4).
      causal_attention: action tokens attend only to earlier ones (DP: True).
      causal_obs_attention: DP's memory mask (see the module docstring).
      image_features, num_keypoints, resnet_width, resnet_blocks, image_crop: inherited
        from resnet.ImageObservationModel (the per-camera image encoder).
      vocab_size, instruction_layers: the instruction encoder (models/text.py, width D),
        used only when the observation has `prompt_tokens`: its embedding is one more
        memory token, visible to every action token.
      dtype: activation dtype ("float32" or "bfloat16"); parameters stay float32.
    """

    embed_dim: int = 256
    num_layers: int = 8
    num_heads: int = 4
    causal_attention: bool = True
    causal_obs_attention: bool = True
    vocab_size: int = 259  # the byte tokenizer's (data/tokenizer.py)
    instruction_layers: int = 1
    dtype: str = "float32"

    @nn.compact
    def __call__(self, obs: dict, noisy_actions: jax.Array, time: jax.Array) -> jax.Array:
        """Args:
          obs: `observation/state` [B, T, S] (normalized), optional
            `observation/image/<camera>` [B, T, h, w, 3] uint8, optional instruction
            `prompt_tokens` / `prompt_mask` [B, L]; other keys ignored.
          noisy_actions: [B, H, A].
          time: [B] (or scalar) float diffusion step / scaled flow time.
        Returns:
          [B, H, A] float32.
        """
        dtype = jnp.dtype(self.dtype)
        width = self.embed_dim
        if width % self.num_heads:
            raise ValueError(f"embed_dim {width} not divisible by num_heads {self.num_heads}")
        batch, horizon, action_dim = layers.check_model_inputs(obs, noisy_actions, time)
        obs_features = self.observation_encoder(dtype)(obs)  # [B, T, F]
        obs_horizon = obs_features.shape[1]

        pos = self.param("pos_emb", nn.with_logical_partitioning(_INIT, _IN_AXES), (horizon, width))
        x = layers.dense(width, _IN_AXES, dtype=dtype, kernel_init=_INIT, name="input_emb")(
            noisy_actions.astype(dtype)
        )
        x = x + pos.astype(dtype)

        time = jnp.broadcast_to(jnp.asarray(time, jnp.float32), (batch,))
        time_token = layers.sinusoidal_embedding(time, width)[:, None, :].astype(dtype)
        obs_tokens = layers.dense(
            width, _IN_AXES, dtype=dtype, kernel_init=_INIT, name="cond_obs_emb"
        )(obs_features.astype(dtype))
        cond = jnp.concatenate([time_token, obs_tokens], axis=1)  # [B, 1 + T, D]
        cond_pos = self.param(
            "cond_pos_emb",
            nn.with_logical_partitioning(_INIT, _IN_AXES),
            (1 + obs_horizon, width),
        )
        cond = cond + cond_pos.astype(dtype)
        cond = layers.dense(4 * width, dtype=dtype, kernel_init=_INIT, name="cond_mlp_in")(cond)
        cond = layers.dense(width, _OUT_AXES, dtype=dtype, kernel_init=_INIT, name="cond_mlp_out")(
            layers.mish(cond)
        )
        instruction = text.encode_instruction(
            obs,
            vocab_size=self.vocab_size,
            features=width,
            num_layers=self.instruction_layers,
            num_heads=self.num_heads,
            dtype=self.dtype,
        )
        if instruction is not None:  # appended last: [B, 1 + T + 1, D]
            cond = jnp.concatenate([cond, instruction[:, None, :].astype(dtype)], axis=1)

        h_idx = jnp.arange(horizon)[:, None]
        self_mask = h_idx >= jnp.arange(horizon)[None, :] if self.causal_attention else None
        memory_mask = None
        if self.causal_obs_attention:
            memory_mask = h_idx >= jnp.arange(1 + obs_horizon)[None, :] - 1  # [H, 1 + T]
            if cond.shape[1] > 1 + obs_horizon:  # the instruction token: always visible
                memory_mask = jnp.concatenate([memory_mask, jnp.ones((horizon, 1), bool)], axis=1)
        # [H, K] -> [1, 1, H, K]: broadcast over batch and heads.
        self_mask = None if self_mask is None else self_mask[None, None]
        memory_mask = None if memory_mask is None else memory_mask[None, None]
        for i in range(self.num_layers):
            x = DecoderBlock(self.num_heads, dtype, name=f"block{i}")(
                x, cond, self_mask, memory_mask
            )
        x = layers.layer_norm(dtype, "norm_out")(x)
        out = layers.dense(
            action_dim, (layers.AXIS_EMBED, None), dtype=dtype, kernel_init=_INIT, name="head"
        )(x)
        chex.assert_shape(out, (batch, horizon, action_dim))
        return out.astype(jnp.float32)
