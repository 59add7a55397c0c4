"""A small causal transformer over discrete action tokens (RT-2 / OpenVLA-style baseline).

The action chunk [H, A] is read as a sequence of N = H·A tokens in time-major order
(a_{0,0}, a_{0,1}, ..., a_{0,A-1}, a_{1,0}, ...), each token a bin index in {0..V-1}
(objectives/tokens.py does the binning). The model predicts every token from the
observation and the tokens before it:

  p(tokens | o) = prod_{n=0}^{N-1} p(tok_n | o, tok_0 .. tok_{n-1})

Sequence fed to the transformer (length N):
  position 0:  e(o)            an MLP embedding of the flattened state history
  position n:  E[tok_{n-1}]    the previous token's embedding (n = 1 .. N-1)
plus a learned position embedding; a causal mask lets position n see positions 0..n only,
so the output at position n is the distribution of tok_n. The observation plays the role
of the BOS token.

Call convention (the one every model has, `model.apply({"params": p}, obs, x, t)`):
  x: [B, H, A] float32 holding the chunk's *bin indices* as floats (exact for V <= 2^24);
     only tokens strictly before each position influence that position's output, so a
     sampler may pass a partly filled buffer (zeros after the current position).
  t: ignored (there is no noise level); kept for the common signature.
  returns: logits [B, H, A, V] float32 (not [B, H, A]: only objectives/tokens.py calls it).
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.data import schema
from action_gen.models import layers

AXIS_POSITION = "position"


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = layers.layer_norm(name="ln_attn", epsilon=1e-6)(x)
        x = x + layers.attention(self.num_heads, name="attn")(h, h, mask=mask)
        h = layers.layer_norm(name="ln_mlp", epsilon=1e-6)(x)
        h = layers.dense(self.mlp_ratio * width, name="mlp_in")(h)
        h = nn.gelu(h)
        h = layers.dense(width, (layers.AXIS_MLP, layers.AXIS_EMBED), name="mlp_out")(h)
        return x + h


class TokenHead(nn.Module):
    """Autoregressive action-token transformer conditioned on the state history.

    Attributes:
      num_bins: vocabulary size V (bins per action dimension; RT-2 / OpenVLA: 256).
      embed_dim: transformer width D.
      num_layers: transformer blocks.
      num_heads: attention heads (D must be divisible by it).
      mlp_ratio: MLP hidden width / D.
    """

    num_bins: int = 256
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, obs: dict, tokens: jax.Array, time: jax.Array) -> jax.Array:
        """Args:
          obs: `schema.OBS_STATE` [B, T, S] float32 (normalized); `obs_pad_mask` is not
            used (padded steps repeat the first real observation, as for the U-Net).
          tokens: [B, H, A] float bin indices (teacher-forced targets, or a sampler's
            buffer); see the module docstring.
          time: ignored.
        Returns:
          logits [B, H, A, V] float32; logits[:, h, a] depend only on the observation and
          the tokens before (h, a) in time-major order.
        """
        batch, horizon, action_dim = layers.check_model_inputs(obs, tokens, time)
        del time
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"token_head: embed_dim={self.embed_dim} not divisible by "
                f"num_heads={self.num_heads}"
            )
        state = jnp.asarray(obs[schema.OBS_STATE], jnp.float32)
        length = horizon * action_dim
        ids = jnp.clip(jnp.round(tokens).astype(jnp.int32), 0, self.num_bins - 1)
        ids = ids.reshape(batch, length)

        obs_emb = layers.MLP((self.embed_dim, self.embed_dim), name="obs_mlp")(
            state.reshape(batch, -1)
        )
        tok_emb = nn.Embed(
            self.num_bins,
            self.embed_dim,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (layers.AXIS_VOCAB, layers.AXIS_EMBED)
            ),
            name="token_embed",
        )(ids[:, :-1])
        # Shift right by one: position n sees tok_{n-1}; position 0 is the observation.
        x = jnp.concatenate([obs_emb[:, None, :], tok_emb], axis=1)
        pos = self.param(
            "pos_embed",
            nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (AXIS_POSITION, layers.AXIS_EMBED)
            ),
            (length, self.embed_dim),
            jnp.float32,
        )
        x = x + pos[None]
        mask = nn.make_causal_mask(ids)  # [B, 1, N, N]
        for i in range(self.num_layers):
            x = _Block(self.num_heads, self.mlp_ratio, name=f"block{i}")(x, mask)
        x = layers.layer_norm(name="ln_out", epsilon=1e-6)(x)
        logits = layers.dense(self.num_bins, (layers.AXIS_EMBED, layers.AXIS_VOCAB), name="logits")(
            x
        )
        chex.assert_shape(logits, (batch, length, self.num_bins))
        return logits.reshape(batch, horizon, action_dim, self.num_bins).astype(jnp.float32)
