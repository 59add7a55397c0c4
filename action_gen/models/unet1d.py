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

import functools
from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.models import fused_block, layers, resnet, text

# The key of `ConditionalUnet1D.prepare`'s context: the observation features [B, T*F (+ D)].
OBSERVATION_FEATURES = "unet1d/observation_features"
# The multiple-choice head's parameters, and the 1-head output layer they can start from.
HYPOTHESES_HEAD, OUTPUT_LAYER = "hypotheses_conv", "final_conv"
# Each hypothesis starts as the 1-head output layer plus N(0, (s · std(kernel))²) noise on
# its kernel, s this (BUILD_NOTES, issue 16: in a probe, copies split the modes without
# blends where a fresh head collapsed onto one hypothesis).
HYPOTHESES_INIT_NOISE = 0.01


def hypotheses_from_output_layer(
    output_layer: dict, num_hypotheses: int, key: jax.Array, noise: float = HYPOTHESES_INIT_NOISE
) -> dict:
    """`hypotheses_conv` parameters from a 1-head model's `final_conv`: K copies of its
    kernel [1, C, A] (each plus its own small Gaussian noise, so the copies can part) and
    bias [A], with zero score channels (equal logits).

    Returns:
      {"kernel": [1, C, K (A + 1)], "bias": [K (A + 1)]} in the head's channel order
      (hypothesis-major, the score last).
    """
    kernel, bias = output_layer["kernel"], output_layer["bias"]
    width, channels, action_dim = kernel.shape
    num_hypotheses = int(num_hypotheses)
    copies = jnp.broadcast_to(kernel[:, :, None], (width, channels, num_hypotheses, action_dim))
    copies = copies + noise * jnp.std(kernel) * jax.random.normal(key, copies.shape, kernel.dtype)
    score = jnp.zeros((width, channels, num_hypotheses, 1), kernel.dtype)
    head_kernel = jnp.concatenate([copies, score], axis=-1)
    head_bias = jnp.concatenate(
        [jnp.tile(bias[None], (num_hypotheses, 1)), jnp.zeros((num_hypotheses, 1), bias.dtype)],
        axis=-1,
    )
    return {
        "kernel": head_kernel.reshape(width, channels, num_hypotheses * (action_dim + 1)),
        "bias": head_bias.reshape(-1),
    }


class Conv1dBlock(nn.Module):
    """Conv1d → GroupNorm → Mish, over [B, L, C_in] → [B, L, C_out]."""

    features: int
    kernel_size: int
    n_groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = layers.Conv1d(self.features, self.kernel_size, name="conv")(x)
        x = layers.group_norm(self.n_groups, name="norm")(x)
        return layers.mish(x)


class ConditionalResidualBlock1D(nn.Module):
    """Conv1dBlock → FiLM(cond) → Conv1dBlock, plus a (1x1-conv) residual.

    Attributes:
      fused: the forward pass as one Pallas kernel (models/fused_block.py) on this block's
        own parameters (the tree is the unfused one: initialization runs the unfused
        path); its gradient is the unfused block's (`fused_block.with_reference_vjp`).

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
    fused: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        if self.fused and not self.is_initializing():
            return self._fused_call(x, cond)
        h = Conv1dBlock(self.features, self.kernel_size, self.n_groups, name="block0")(x)
        h = layers.FiLM(self.cond_predict_scale, name="film")(h, cond)
        h = Conv1dBlock(self.features, self.kernel_size, self.n_groups, name="block1")(h)
        residual = x
        if x.shape[-1] != self.features:
            residual = layers.Conv1d(self.features, 1, name="residual_conv")(x)
        return h + residual

    def _fused_call(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        params = nn.meta.unbox(self.variables["params"])
        unfused = ConditionalResidualBlock1D(
            self.features, self.kernel_size, self.n_groups, self.cond_predict_scale
        )

        def reference(params, x, cond):
            return unfused.apply({"params": params}, x, cond)

        fused = functools.partial(
            fused_block.residual_block,
            n_groups=self.n_groups,
            cond_predict_scale=self.cond_predict_scale,
            out_dtype=jax.eval_shape(reference, params, x, cond).dtype,
        )
        return fused_block.with_reference_vjp(fused, reference)(params, x, cond)


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
      step_input: a second time input, the step size d of shortcut models
        (objectives/shortcut.py): `time` may be [B, 2] = (time, step size), each with its
        own sinusoidal embedding + MLP, summed; a [B] time means step size 0. False (the
        default) leaves the parameter tree exactly DP's.
      float32_body: True: the 1-D U-Net casts the noisy actions to float32, so it computes
        in float32 whatever it is called with (bf16 parameters are promoted). False: it
        keeps the caller's dtype, so bf16 parameters and inputs (`train.compute_dtype =
        "bfloat16"`, or a sampler fed bf16-cast parameters) run the whole body in bf16
        (GroupNorm statistics stay float32). Same function in float32 either way. On an
        H200 (BUILD_NOTES, issue 17) False was 8-10% faster for batch-1 sampling with the
        parameters cast to bf16 once, and 44% slower for bf16 training at batch 256, so
        the default stays True.
      num_hypotheses: K. 1 (the default): the [B, H, A] output above (parameter tree
        exactly DP's). K > 1: a multiple-choice head instead of `final_conv` — a 1x1
        conv `hypotheses_conv` to K (A + 1) channels, returned as [B, K, H, A + 1]:
        [..., :A] is hypothesis k's output (what the 1-head model predicts: velocity,
        ε, ...), [..., A] its per-step score, whose mean over H is hypothesis k's logit
        (objectives/consistency.py: winner-takes-all training, argmax sampling).
      fused_blocks: each residual block's forward pass as one Pallas kernel
        (models/fused_block.py: conv GEMMs, GroupNorm, Mish, FiLM, residual; interpret
        mode on CPU) instead of ~12 XLA ops; same parameter tree and function (float
        rounding aside), the gradient the unfused one. False (the default): XLA only.
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
    step_input: bool = False
    num_hypotheses: int = 1
    fused_blocks: bool = False

    def observation_features(self, obs: dict) -> jax.Array:
        """The part of the condition that is the same at every denoising step [B, T*F (+ D)]:
        flattened per-step observation features (F = S without images; see the module
        docstring), and the instruction embedding when the observation carries prompt tokens.

        `obs[schema.OBS_PAD_MASK]` is not used: padded steps repeat the first real
        observation (as in DP), so the flattened history is well defined either way.
        """
        state = self.observation_encoder(jnp.dtype(self.dtype))(obs)  # [B, T, F]
        parts = [state.reshape(state.shape[0], -1)]
        instruction = text.encode_instruction(
            obs,
            vocab_size=self.vocab_size,
            features=self.instruction_features,
            num_layers=self.instruction_layers,
        )
        if instruction is not None:
            parts.append(instruction)
        return jnp.concatenate(parts, axis=-1)

    def condition(self, features: jax.Array, time: jax.Array) -> jax.Array:
        """The global condition [B, E + T*F (+ D)]: the time embedding, then `features`
        (from `observation_features`)."""
        batch = features.shape[0]
        time = jnp.asarray(time, jnp.float32)
        step = None
        if self.step_input:
            step = time[:, 1] if time.ndim == 2 else jnp.zeros((batch,), jnp.float32)
            time = time[:, 0] if time.ndim == 2 else time
        time = jnp.broadcast_to(time, (batch,))
        widths = (4 * self.time_embed_dim, self.time_embed_dim)
        emb = layers.sinusoidal_embedding(time, self.time_embed_dim)
        emb = layers.MLP(widths, name="time_mlp")(emb)
        if step is not None:
            step_emb = layers.sinusoidal_embedding(step, self.time_embed_dim)
            emb = emb + layers.MLP(widths, name="step_mlp")(step_emb)
        return jnp.concatenate([emb, features], axis=-1)

    def prepare(self, obs: dict) -> dict:
        """The observation-only work, once per chunk: {OBSERVATION_FEATURES: [B, T*F (+ D)]}.

        Samplers split a model with `prepare` and `apply_with_context`
        (`models.make_apply_fn`) and run this before their loop. Without it the image
        encoder ran at every denoising step: XLA did not hoist it out of the scanned loop
        (21 cuDNN convolutions in each DDIM step of the image U-Net on an H200, issue 17).
        """
        return self(obs, None, None)

    def apply_with_context(self, context: dict, noisy_actions: jax.Array, time: jax.Array):
        """The U-Net on `prepare`'s context: [B, H, A] float32, equal to `__call__(obs, ...)`."""
        return self(context, noisy_actions, time)

    @nn.compact
    def __call__(self, obs: dict, noisy_actions: jax.Array | None, time: jax.Array | None):
        """Args:
          obs: `schema.OBS_STATE` [B, T, S] float32 (normalized), optional camera images
            `schema.image_key(camera)` [B, T, h, w, 3] uint8, optional instruction
            `schema.PROMPT_TOKENS` / `schema.PROMPT_MASK` [B, L]; other keys ignored. Or
            `prepare`'s context (the observation features already computed).
          noisy_actions: [B, H, A]; None returns `prepare`'s context instead.
          time: [B] (or scalar) float: the diffusion step index k, or a scaled flow time;
            with `step_input` also [B, 2]: (scaled time, step-size input).
        Returns:
          [B, H, A] float32; with `num_hypotheses` K > 1, [B, K, H, A + 1] (see the class
          docstring).
        """
        if OBSERVATION_FEATURES in obs:
            features = obs[OBSERVATION_FEATURES]
        else:
            features = self.observation_features(obs)
        if noisy_actions is None:
            return {OBSERVATION_FEATURES: features}
        dims = tuple(int(d) for d in self.down_dims)
        if OBSERVATION_FEATURES in obs:
            batch, horizon, action_dim = layers.check_action_inputs(
                noisy_actions, time, batch=features.shape[0], step_input=self.step_input
            )
        else:
            batch, horizon, action_dim = layers.check_model_inputs(
                obs, noisy_actions, time, step_input=self.step_input
            )
        if horizon % 2 ** (len(dims) - 1):
            raise ValueError(f"action horizon {horizon} not divisible by 2^{len(dims) - 1}")
        cond = self.condition(features, time)
        block = dict(
            kernel_size=self.kernel_size,
            n_groups=self.n_groups,
            cond_predict_scale=self.cond_predict_scale,
            fused=self.fused_blocks,
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
                x = layers.Conv1d(dim, 3, strides=2, padding=1, name=f"down{i}_downsample")(x)

        for i in range(2):
            x = ConditionalResidualBlock1D(dims[-1], name=f"mid_res{i}", **block)(x, cond)

        # Up levels pair with down levels len-1, ..., 1 (DP never uses the first skip).
        for j, i in enumerate(range(len(dims) - 1, 0, -1)):
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = ConditionalResidualBlock1D(dims[i - 1], name=f"up{j}_res0", **block)(x, cond)
            x = ConditionalResidualBlock1D(dims[i - 1], name=f"up{j}_res1", **block)(x, cond)
            x = layers.ConvTranspose1d(dims[i - 1], 4, 2, 1, name=f"up{j}_upsample")(x)

        x = Conv1dBlock(dims[0], self.kernel_size, self.n_groups, name="final_block")(x)
        num_hypotheses = int(self.num_hypotheses)
        if num_hypotheses < 1:
            raise ValueError(f"model.num_hypotheses={num_hypotheses} must be >= 1")
        if num_hypotheses == 1:
            out = layers.Conv1d(action_dim, 1, name=OUTPUT_LAYER)(x)
            chex.assert_shape(out, (batch, horizon, action_dim))
            return out
        out = layers.Conv1d(num_hypotheses * (action_dim + 1), 1, name=HYPOTHESES_HEAD)(x)
        out = out.reshape(batch, horizon, num_hypotheses, action_dim + 1)
        return jnp.moveaxis(out, 2, 1)  # [B, K, H, A + 1]
