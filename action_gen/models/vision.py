"""Vision encoders: a plain ViT (SigLIP So400m/14-like at the π0 size), random init.

  x = patchify(image) @ W_patch + pos            [B, N, D], N = (size / patch)^2
  depth x { x += MHA(LN(x));  x += MLP_gelu(LN(x)) }
  tokens = LN(x)                                 [B, N, D]  (no pooling: π0 keeps tokens)

Patchify is a reshape + one matmul (a stride-p conv with kernel p, without the conv op).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.models import layers
from action_gen.models.layers import AXIS_EMBED, AXIS_HEADS, AXIS_MLP


def _layer_norm(dtype, name):
    return layers.layer_norm(dtype, name, epsilon=1e-6)  # SigLIP's epsilon


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN x), then + MLP(LN x) (GELU-tanh, as SigLIP)."""

    mlp_dim: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        b, n, _ = x.shape
        y = _layer_norm(self.dtype, "ln_attn")(x)
        qkv = layers.dense(3 * width, (AXIS_EMBED, AXIS_HEADS), dtype=self.dtype, name="qkv")(y)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, head_dim), 3, axis=2)
        y = layers.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0]).reshape(b, n, width)
        x = x + layers.dense(width, (AXIS_HEADS, AXIS_EMBED), dtype=self.dtype, name="out")(y)
        y = _layer_norm(self.dtype, "ln_mlp")(x)
        y = layers.dense(self.mlp_dim, (AXIS_EMBED, AXIS_MLP), dtype=self.dtype, name="mlp_in")(y)
        y = nn.gelu(y)
        return x + layers.dense(width, (AXIS_MLP, AXIS_EMBED), dtype=self.dtype, name="mlp_out")(y)


class ViT(nn.Module):
    """ViT over float images [B, h, w, 3] in [-1, 1] → tokens [B, N, width].

    Attributes:
      width, depth, mlp_dim, num_heads: So400m/14 is 1152, 27, 4304, 16.
      patch_size: p; h and w must be divisible by it.
      dtype: activation dtype (parameters stay float32).
    """

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        b, h, w, c = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} not divisible by patch size {p}")
        patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
        x = layers.dense(self.width, (None, AXIS_EMBED), dtype=self.dtype, name="patch_embed")(
            patches
        )
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, AXIS_EMBED)),
            (x.shape[1], self.width),
            jnp.float32,
        )
        x = x + pos.astype(self.dtype)
        for i in range(self.depth):
            x = EncoderBlock(self.mlp_dim, self.num_heads, self.dtype, name=f"block{i}")(x)
        return _layer_norm(self.dtype, "ln_final")(x)
