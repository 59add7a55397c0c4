"""The instruction encoder of the U-Net and DP-T: tokenized prompt -> one embedding.

Multi-task policies (one network over several tasks) need to know which task to do; the
task's language instruction, tokenized on the host (data/transforms.py), is the input:

  x_l   = E[token_l] + p_l                                  [B, L, D]   (learned E, p)
  x     = N x pre-norm self-attention block (keys masked to the real tokens) + GELU MLP
  e     = W · (sum_l m_l x_l / max(1, sum_l m_l))           [B, D]      (masked mean)

The encoder is small on purpose: it has to tell a few dozen instructions apart and map
each to a conditioning vector, not understand open-ended language (that is π0's VLM,
models/pi0.py). The U-Net appends `e` to its FiLM condition; DP-T adds it as one more
memory token that every action token may attend to.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.data import schema
from action_gen.models import layers

# N(0, 0.02) weights, as DP-T's (the encoder is built like its decoder blocks).
_INIT = layers.small_normal_init


class InstructionEncoder(nn.Module):
    """[B, L] token ids + [B, L] mask -> [B, features].

    Attributes:
      vocab_size: embedding rows; must cover the tokenizer's ids (byte tokenizer: 259).
      features: width D of the tokens and of the output.
      num_layers: self-attention blocks over the tokens (0: a bag of embeddings).
      num_heads: attention heads (divides `features`).
      dtype: activation dtype; parameters stay float32.
    """

    vocab_size: int = 259
    features: int = 64
    num_layers: int = 1
    num_heads: int = 4
    dtype: str = "float32"

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        width = self.features
        if width % self.num_heads:
            raise ValueError(
                f"instruction features {width} not divisible by {self.num_heads} heads"
            )
        length = tokens.shape[-1]
        table = self.param(
            "token_emb",
            nn.with_logical_partitioning(_INIT, (layers.AXIS_VOCAB, layers.AXIS_EMBED)),
            (self.vocab_size, width),
        )
        pos = self.param(
            "pos_emb",
            nn.with_logical_partitioning(_INIT, (None, layers.AXIS_EMBED)),
            (length, width),
        )
        x = (jnp.take(table, tokens, axis=0) + pos).astype(dtype)  # [B, L, D]
        mask = jnp.asarray(mask, bool)
        attend = mask[:, None, None, :]  # [B, 1, 1, L]: queries see only real tokens
        out_axes = (layers.AXIS_MLP, layers.AXIS_EMBED)
        for i in range(self.num_layers):
            h = layers.layer_norm(dtype, f"block{i}_norm_attn")(x)
            attn = layers.attention(self.num_heads, dtype, f"block{i}_attn", _INIT)
            x = x + attn(h, h, mask=attend)
            h = layers.layer_norm(dtype, f"block{i}_norm_ff")(x)
            h = layers.dense(4 * width, dtype=dtype, kernel_init=_INIT, name=f"block{i}_ff_in")(h)
            ff_out = layers.dense(
                width, out_axes, dtype=dtype, kernel_init=_INIT, name=f"block{i}_ff_out"
            )
            x = x + ff_out(nn.gelu(h))
        x = layers.layer_norm(dtype, "norm_out")(x).astype(jnp.float32)
        weights = mask.astype(jnp.float32)[..., None]
        pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # [B, D]
        proj = layers.dense(width, dtype=jnp.float32, kernel_init=_INIT, name="proj")
        return proj(pooled)


def encode_instruction(obs: dict, **kwargs) -> jax.Array | None:
    """The instruction embedding [B, D] of `obs` when it carries `prompt_tokens` (the config
    asked for language input, `data.prompt_max_len`), else None. Called from inside a
    compact `__call__`; `kwargs` are InstructionEncoder attributes."""
    if schema.PROMPT_TOKENS not in obs:
        return None
    tokens = obs[schema.PROMPT_TOKENS]
    mask = obs.get(schema.PROMPT_MASK, jnp.ones(tokens.shape, bool))
    return InstructionEncoder(name="instruction_encoder", **kwargs)(tokens, mask)
