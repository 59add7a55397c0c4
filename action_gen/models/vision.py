"""Vision encoders: a plain ViT (SigLIP So400m/14 at the π0 size), random init.

  x = patchify(image) @ W_patch + pos            [B, N, D], N = (size / patch)^2
  depth x { x += MHA(LN(x));  x += MLP_gelu(LN(x)) }
  tokens = LN(x)                                 [B, N, D]  (no pooling: π0 keeps tokens)

Patchify is a reshape + one matmul (a stride-p conv with kernel p, without the conv op; the
kernel [p*p*3, D] is SigLIP's conv kernel [p, p, 3, D] flattened). The blocks are one
`nn.scan` over weights stacked along a leading "layers" axis (`blocks/qkv/kernel`
[depth, D, 3D]), optionally rematerialized (`remat`, see `checkpoint_policy`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.models import layers
from action_gen.models.layers import AXIS_EMBED, AXIS_HEADS, AXIS_MLP


def checkpoint_policy(remat: bool | str | None):
    """The `jax.checkpoint_policies` policy a model's `remat` setting names, or None (no
    rematerialization): False / None / "none" → None; True / "full" → nothing_saveable
    (recompute the whole layer in the backward pass); any other string → that policy
    (e.g. "dots_with_no_batch_dims_saveable": keep the matmul outputs)."""
    if remat in (False, None, "none", ""):
        return None
    if remat is True or remat == "full":
        return jax.checkpoint_policies.nothing_saveable
    policy = getattr(jax.checkpoint_policies, str(remat), None)
    if policy is None:
        raise ValueError(
            f"model.remat={remat!r}: expected none, full, or a jax.checkpoint_policies name"
        )
    return policy


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, h, w, c] → [B, (h/p)(w/p), p·p·c] patches in row-major order, each flattened as
    (row, column, channel): the layout of a conv kernel [p, p, c, D] flattened."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} not divisible by patch size {p}")
    patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(b, (h // p) * (w // p), p * p * c)


def _layer_norm(dtype, name):
    return layers.layer_norm(dtype, name, epsilon=1e-6)  # SigLIP's epsilon


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN x), then + MLP(LN x) (GELU-tanh, as SigLIP).
    Called as a scan body: (x, None) → (x', None)."""

    mlp_dim: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"  # layers.ATTENTION_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, x: jax.Array, _=None):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        b, n, _ = x.shape
        y = _layer_norm(self.dtype, "ln_attn")(x)
        qkv = layers.dense(3 * width, (AXIS_EMBED, AXIS_HEADS), dtype=self.dtype, name="qkv")(y)
        q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, head_dim), 3, axis=2)
        y = layers.dot_product_attention(
            q[:, :, 0], k[:, :, 0], v[:, :, 0], implementation=self.attention
        ).reshape(b, n, width)
        x = x + layers.dense(width, (AXIS_HEADS, AXIS_EMBED), dtype=self.dtype, name="out")(y)
        y = _layer_norm(self.dtype, "ln_mlp")(x)
        y = layers.dense(self.mlp_dim, (AXIS_EMBED, AXIS_MLP), dtype=self.dtype, name="mlp_in")(y)
        y = nn.gelu(y, approximate=True)
        y = layers.dense(width, (AXIS_MLP, AXIS_EMBED), dtype=self.dtype, name="mlp_out")(y)
        return x + y, None


class ViT(nn.Module):
    """ViT over float images [B, h, w, 3] in [-1, 1] → tokens [B, N, width].

    Attributes:
      width, depth, mlp_dim, num_heads: So400m/14 is 1152, 27, 4304, 16.
      patch_size: p; h and w must be divisible by it.
      dtype: activation dtype (parameters stay float32; patchify and position embedding
        run in float32, as SigLIP in openpi).
      remat: the blocks' rematerialization (`checkpoint_policy`).
      attention: the attention implementation (layers.ATTENTION_IMPLEMENTATIONS).
    """

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    dtype: jnp.dtype = jnp.float32
    remat: bool | str = False
    attention: str = "einsum"

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        patches = patchify(images.astype(jnp.float32), self.patch_size)
        x = layers.dense(self.width, (None, AXIS_EMBED), dtype=jnp.float32, name="patch_embed")(
            patches
        )
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, AXIS_EMBED)),
            (x.shape[1], self.width),
            jnp.float32,
        )
        x = (x + pos).astype(self.dtype)
        block = EncoderBlock
        policy = checkpoint_policy(self.remat)
        if policy is not None:
            block = nn.remat(block, policy=policy, prevent_cse=False)
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
            metadata_params={nn.PARTITION_NAME: layers.AXIS_LAYERS},
        )(self.mlp_dim, self.num_heads, self.dtype, self.attention, name="blocks")
        x, _ = blocks(x, None)
        return _layer_norm(self.dtype, "ln_final")(x)
