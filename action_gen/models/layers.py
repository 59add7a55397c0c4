"""Building blocks shared by the action models: Dense / norm layers with named parameter
axes, attention, time embeddings, 1-D convs, FiLM, MLP, and the shape checks of the model
contract's inputs (`check_model_inputs`, chex).

Every model builds its Dense, LayerNorm, GroupNorm and attention layers here (U-Net, DP-T,
the instruction encoder, π0, the ViT, the ResNet, the token head), so their initializers,
axis names and dtype policy (float32 parameters, `dtype` activations) are set in one place.

Sequences are channels-last, [B, L, C] (L positions along the action horizon, C channels),
the layout XLA prefers on every backend; PyTorch's Diffusion Policy uses [B, C, L].

Parameters name their axes (`nn.with_logical_partitioning`) so a rule set in train/ can map
them to mesh axes; `models.init_params` strips the annotations, so callers see plain arrays.
"""

import math
from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.data import schema

# Logical axis names of parameters (mapped to mesh axes by a rule set, MaxText-style).
AXIS_CONV_KERNEL = "conv_kernel"
AXIS_EMBED = "embed"
AXIS_MLP = "mlp"
AXIS_HEADS = "heads"
AXIS_VOCAB = "vocab"
# The leading axis of scanned (stacked) layer weights; never split (a layer is gathered whole).
AXIS_LAYERS = "layers"

_default_kernel_init = nn.initializers.lecun_normal()
# N(0, 0.02): DP-T's (GPT-2's) init of every Linear and attention projection.
small_normal_init = nn.initializers.normal(0.02)
# Masked attention logit: finite, so a fully masked row (a padded query) gives no NaN.
NEG_INF = -2.3819763e38


def _partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, names)


def check_model_inputs(
    obs: dict, noisy_actions: jax.Array, time, step_input: bool = False
) -> tuple[int, int, int]:
    """Asserts the model contract's inputs; returns (B, H, A).

    `obs[schema.OBS_STATE]` [B, T, S] float, `noisy_actions` [B, H, A] float (the token head:
    bin indices as floats), `time` [B] or a scalar (a model with `step_input`: also
    [B, 2], (time, step size)). Shapes and dtypes are static, so under
    jit this runs once, at trace time, and costs nothing per call; a wrong layout fails here,
    by name, instead of as a broadcasting error deep inside a model.
    """
    state = obs[schema.OBS_STATE]
    chex.assert_rank(state, 3)
    chex.assert_type(state, float)
    return check_action_inputs(noisy_actions, time, batch=state.shape[0], step_input=step_input)


def check_action_inputs(
    noisy_actions: jax.Array, time, batch: int, step_input: bool = False
) -> tuple[int, int, int]:
    """`check_model_inputs` without the observation (π0's cached path): noisy actions
    [batch, H, A] float, time [batch] or a scalar (with `step_input` also [batch, 2]);
    returns (B, H, A)."""
    chex.assert_shape(noisy_actions, (batch, None, None))
    chex.assert_type(noisy_actions, float)
    chex.assert_rank(time, {0, 1, 2} if step_input else {0, 1})
    if jnp.ndim(time) == 1:
        chex.assert_shape(time, (batch,))
    if jnp.ndim(time) == 2:
        chex.assert_shape(time, (batch, 2))
    return noisy_actions.shape


def mish(x: jax.Array) -> jax.Array:
    """Mish activation (Misra 2019): x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


def sinusoidal_embedding(time: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Transformer-style sinusoidal embedding of a scalar time, as DP's SinusoidalPosEmb.

    emb(t) = [sin(t * f_0), ..., sin(t * f_{d/2-1}), cos(t * f_0), ..., cos(t * f_{d/2-1})],
    f_i = max_period^(-i / (d/2 - 1)).

    Args:
      time: [B] float (a diffusion step index k, or a continuous time already scaled
        to a comparable range, e.g. 1000 t).
      dim: the embedding width (even, >= 4).
    Returns:
      [B, dim] float32.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_period) / (half - 1)))
    args = jnp.asarray(time, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class SinusoidalPosEmb(nn.Module):
    """Module form of `sinusoidal_embedding`: [B] → [B, dim]."""

    dim: int

    @nn.compact
    def __call__(self, time: jax.Array) -> jax.Array:
        return sinusoidal_embedding(time, self.dim)


def dense(
    features: int,
    axes: tuple[str | None, str | None] = (AXIS_EMBED, AXIS_MLP),
    *,
    dtype=None,
    kernel_init: Callable = _default_kernel_init,
    use_bias: bool = True,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with named parameter axes: kernel [C_in, C_out] as `axes`, bias [C_out] as
    `axes[1]` (zero init). Parameters are float32; `dtype` is the activation dtype (None:
    that of the input)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_partitioned(kernel_init, axes),
        bias_init=_partitioned(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def layer_norm(dtype=None, name: str | None = None, epsilon: float = 1e-5) -> nn.LayerNorm:
    """nn.LayerNorm over the last (embed) axis; float32 scale and bias, `dtype` activations.
    epsilon 1e-5 is PyTorch's (DP-T); SigLIP's ViT and the token head use 1e-6."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_partitioned(nn.initializers.ones_init(), (AXIS_EMBED,)),
        bias_init=_partitioned(nn.initializers.zeros_init(), (AXIS_EMBED,)),
        name=name,
    )


def attention(
    num_heads: int,
    dtype=None,
    name: str | None = None,
    kernel_init: Callable = _default_kernel_init,
) -> nn.MultiHeadDotProductAttention:
    """Flax multi-head attention, `(queries [B, Nq, D], keys [B, Nk, D], mask [B|1, h|1,
    Nq, Nk]) -> [B, Nq, D]`, without dropout (the model contract has no train/eval switch).

    Its projection kernels carry no axis names (they are replicated under any rule set).
    """
    return nn.MultiHeadDotProductAttention(
        num_heads=num_heads,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        deterministic=True,
        name=name,
    )


# `dot_product_attention` implementations: "einsum" (ours, below: two einsums around a
# float32 softmax, what XLA fuses on any backend), or `jax.nn.dot_product_attention`'s
# "xla" (the same math in JAX's own lowering) and "cudnn" (cuDNN's fused flash attention:
# NVIDIA GPUs, bfloat16 / float16 inputs only).
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    implementation: str = "einsum",
) -> jax.Array:
    """Softmax attention over already projected heads, grouped-query when kv < h.

    out[b, i, n] = sum_j softmax_j(q[b, i, n] . k[b, j, g(n)] / sqrt(d)) v[b, j, g(n)], query
    head n reading KV head g(n) = n // (h / kv) (kv = h: plain multi-head; kv = 1:
    multi-query). Logits and softmax in float32; masked logits are NEG_INF.

    Args:
      q: [B, Nq, h, d].
      k, v: [B, Nk, kv, d], kv dividing h.
      mask: [B, Nq, Nk] bool, True where query i may attend to key j; None: all.
      implementation: one of ATTENTION_IMPLEMENTATIONS (see there). A query row with no
        visible key (a padded token) is undefined under "cudnn" and averages every value
        under the others; such rows are masked out downstream.
    Returns:
      [B, Nq, h, d], dtype of v.
    """
    if implementation != "einsum":
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation {implementation!r}; use one of "
                f"{ATTENTION_IMPLEMENTATIONS}"
            )
        out = jax.nn.dot_product_attention(
            q, k, v, mask=None if mask is None else mask[:, None], implementation=implementation
        )
        return out.astype(v.dtype)
    b, nq, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, nq, kv, h // kv, d)
    logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, k).astype(jnp.float32) * d**-0.5
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bgrqk,bkgd->bqgrd", probs, v).reshape(b, nq, h, d)


class MLP(nn.Module):
    """Dense → act → Dense → ... (no activation after the last layer).

    Attributes:
      features: the widths of the layers; the last one is the output width.
      activation: applied between layers (Mish by default, as DP's time encoder).
    """

    features: Sequence[int]
    activation: Callable = mish

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.features):
            x = dense(width, name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = self.activation(x)
        return x


def _kernel_params(module: nn.Module, kernel_size: int, c_in: int, c_out: int, use_bias: bool):
    kernel = module.param(
        "kernel",
        _partitioned(_default_kernel_init, (AXIS_CONV_KERNEL, AXIS_EMBED, AXIS_MLP)),
        (kernel_size, c_in, c_out),
        jnp.float32,
    )
    bias = None
    if use_bias:
        bias = module.param(
            "bias", _partitioned(nn.initializers.zeros_init(), (AXIS_MLP,)), (c_out,), jnp.float32
        )
    return kernel, bias


class Conv1d(nn.Module):
    """1-D convolution over [B, L, C_in] → [B, L_out, C_out] as one matmul (im2col).

    y[:, i] = b + sum_k x_pad[:, s*i + k] @ W_k, with x zero-padded by `padding` on both
    sides (default K // 2, PyTorch's `padding=kernel_size // 2`: length-preserving for odd K
    at stride 1, halving at stride 2), L_out = (L + 2p - K) // s + 1.

    Why not `lax.conv_general_dilated`: on CPU, XLA's conv is pathologically slow when the
    kernel is longer than the input (K=5 on the U-Net's length-4 bottom level: 47 ms vs
    0.7 ms at B=1, C=1024; 3 s vs 7 ms at B=64). Concatenating the K shifted windows along
    channels and doing one [B*L_out, K*C_in] @ [K*C_in, C_out] GEMM is as fast as the
    native conv elsewhere (within ~10% forward, faster backward at B=1), so it is used
    always; the kernel has nn.Conv's [K, C_in, C_out] layout either way.

    Attributes:
      features: C_out.
      kernel_size: K.
      strides: s.
      padding: zeros added on each side; None means K // 2.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: int | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.strides
        p = k // 2 if self.padding is None else self.padding
        kernel, bias = _kernel_params(self, k, x.shape[-1], self.features, self.use_bias)
        length = x.shape[1]
        out_len = (length + 2 * p - k) // s + 1
        x_pad = jnp.pad(x, ((0, 0), (p, p), (0, 0)))
        if k == 1 and s == 1:
            cols = x_pad
        else:
            windows = [x_pad[:, j : j + s * (out_len - 1) + 1 : s] for j in range(k)]
            cols = jnp.concatenate(windows, axis=-1)  # [B, L_out, K*C_in], k-major
        y = cols @ kernel.reshape(k * x.shape[-1], self.features)
        return y if bias is None else y + bias


class ConvTranspose1d(nn.Module):
    """Transposed 1-D convolution with PyTorch's semantics, over [B, L, C_in].

    y[:, o] = b + sum_{(i, k): o = s*i - p + k} x[:, i] @ W_k, L_out = (L - 1) s - 2p + K.
    DP's Upsample1d is K=4, s=2, p=1: L_out = 2L. Implemented as K matmuls whose outputs are
    spread with stride s by `lax.pad` (interior padding) and summed: no conv op, so the
    CPU slow path of `Conv1d` is avoided here too.

    Attributes:
      features: C_out.
      kernel_size: K.
      strides: s.
      padding: p, cropped from each side of the full output.
    """

    features: int
    kernel_size: int = 4
    strides: int = 2
    padding: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.strides, self.padding
        kernel, bias = _kernel_params(self, k, x.shape[-1], self.features, self.use_bias)
        length = x.shape[1]
        full_len = (length - 1) * s + k
        # One GEMM for all taps: [B, L, C_in] @ [C_in, K*C_out].
        z = x @ jnp.transpose(kernel, (1, 0, 2)).reshape(x.shape[-1], k * self.features)
        z = z.reshape(*z.shape[:2], k, self.features)
        zero = jnp.zeros((), z.dtype)
        y = 0
        for j in range(k):
            # Tap j lands at positions s*i + j of the full output.
            y = y + jax.lax.pad(z[:, :, j], zero, ((0, 0, 0), (j, k - 1 - j, s - 1), (0, 0, 0)))
        y = y[:, p : full_len - p]
        return y if bias is None else y + bias


def group_norm(num_groups: int = 8, name: str | None = None, dtype=None) -> nn.GroupNorm:
    """nn.GroupNorm over the channels (last axis) of [B, L, C] or [N, h, w, C]: statistics
    per sample and group; float32 scale and bias, `dtype` activations."""
    return nn.GroupNorm(
        num_groups=num_groups,
        epsilon=1e-5,  # PyTorch's default, as in DP
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=_partitioned(nn.initializers.ones_init(), (AXIS_MLP,)),
        bias_init=_partitioned(nn.initializers.zeros_init(), (AXIS_MLP,)),
        name=name,
    )


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018) of [B, L, C] by a condition [B, D].

    h' = scale(c) * h + bias(c), with [scale, bias] = Dense(mish(c)) (DP's cond_encoder with
    cond_predict_scale=True); with `predict_scale=False`, h' = h + bias(c).
    """

    predict_scale: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, cond: jax.Array) -> jax.Array:
        channels = h.shape[-1]
        width = 2 * channels if self.predict_scale else channels
        embed = dense(width, name="cond_encoder")(mish(cond))[:, None, :]  # [B, 1, width]
        if not self.predict_scale:
            return h + embed
        scale, bias = embed[..., :channels], embed[..., channels:]
        return scale * h + bias
