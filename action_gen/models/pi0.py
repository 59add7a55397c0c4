"""π0 (Black et al. 2024) and π0.5: a VLM backbone and an action expert, one joint attention.

Sequence, with the expert that owns each token and its block id (`ar_mask`, 1 opens a block):

  [ images (ViT → backbone width), text (token embedding * sqrt(D)) | state | actions + time ]
    backbone expert (Gemma-like), ar 0 ...                           expert, ar 1 | 1, 0, 0 ...

Every layer is a *mixture of transformer experts*: each token group is normed, projected to
q/k/v and through its MLP with its own expert's weights, but attention runs jointly over
the concatenated sequence (multi-query: 8 query heads, 1 KV head, RoPE). The block-causal
mask (`make_attention_mask`) makes the prefix bidirectional and blind to the suffix, the
state token see the prefix and itself, and the action tokens see everything; padded tokens
(missing cameras, prompt padding) are invisible to everyone and do not advance positions:
positions = cumsum(input_mask) - 1.

Because the prefix never sees the suffix, its keys/values do not depend on (x, t): `prepare`
runs the prefix through the backbone once and returns the per-layer KV cache, and
`apply_with_context` runs only the suffix through the expert, attending to the cache.
`__call__` is exactly `apply_with_context(prepare(obs), x, t)`, so training and cached
sampling share one code path; `forward_joint` is the uncached one-pass reference (openpi's
training forward; also what `init` traces, so every parameter is created in one scan).

Layers are scanned (`nn.scan`): the weights of the `depth` layers are stacked along a leading
"layers" axis (`layers/backbone/q/kernel` [depth, W, h*d], `vit/blocks/...`), so tracing and
compiling cost one layer whatever the depth; `remat` picks the rematerialization policy of
the scanned layer (a name of `jax.checkpoint_policies`, "full" = nothing saved).

Time: the objective passes `time = t * time_scale`; the model divides by `time_scale` and
embeds t with π0's sin-cos embedding (periods `time_min_period` .. `time_max_period`,
openpi's 4e-3 .. 4). The model does not care which end of t is noise (the objective's
`time_convention`). Time conditioning (`time_conditioning`):
  "mlp":    a_i = W2 swish(W1 [W_in x_i, emb(t)])                       (π0)
  "adarms": a_i = W_in x_i; every expert RMSNorm is adaptive:            (π0.5)
            y = rms(h) (1 + s(c)) + b(c), residual h + g(c) * f(y), c = MLP_swish(emb(t)),
            [s, b, g] a zero-initialised Dense of c (so the expert's blocks start as identity).

Options that reproduce openpi's function (tools/openpi_import.py sets them):
  state_pad_dim  zero-pad the state to this dim before `state_proj` (openpi: 32).
  state_token    False: no state token (π0.5 reads the state only through the prompt, as
                 discretized text made by the tokenizer); the actions then open the suffix.
  camera_order   the cameras used, in this order, whatever the dict order (openpi:
                 base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb); None: every camera of
                 the observation, sorted by name.
  image_resize   "stretch" (bilinear to image_size²) or "pad" (openpi's resize_with_pad:
                 keep the aspect ratio, pad with black) when images are not image_size².
Images: uint8 in [0, 255] → x / 255 * 2 - 1 (openpi's arithmetic); float images are taken as
already in [-1, 1]. GELU is the tanh approximation everywhere (Gemma, SigLIP); RMSNorm
scales by (1 + scale); text embeddings are multiplied by sqrt(width) (Gemma).

Action dim: `noisy_actions` has the model's `action_dim` (π0: 32); the data pipeline pads
the robot's actions to it and the loss masks the padded dims. The output is always float32,
also with `dtype="bfloat16"` (bf16 activations; parameters stay float32).

Observation keys: `observation/state` [B, T, S] (last frame used), optional
`observation/image/<cam>` [B, T, h, w, 3] uint8 (last frame, resized to `image_size`),
optional `image_mask/<cam>` [B] bool (default True), optional `prompt_tokens` [B, L] int32
with `prompt_mask` [B, L] bool (see data/tokenizer.py).
"""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.data import schema
from action_gen.models import layers, vision
from action_gen.models.layers import AXIS_EMBED, AXIS_HEADS, AXIS_MLP, AXIS_VOCAB


@dataclasses.dataclass(frozen=True)
class Pi0Size:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    expert_width: int
    expert_mlp_dim: int
    vocab_size: int
    vit_width: int
    vit_depth: int
    vit_mlp_dim: int
    vit_heads: int
    patch_size: int
    image_size: int


SIZES = {
    # openpi's π0 / π0.5: PaliGemma's Gemma 2B (width 2048, mlp 16384, 18 layers, 8 heads,
    # 1 KV head, head dim 256) + the Gemma 300M expert (1024, 4096) + SigLIP So400m/14 at 224².
    "pi0": Pi0Size(2048, 18, 16384, 8, 1, 256, 1024, 4096, 257_152, 1152, 27, 4304, 16, 14, 224),
    # openpi's smallest config: gemma variant "dummy" for both experts, same So400m/14 ViT.
    "openpi_dummy": Pi0Size(64, 4, 128, 8, 1, 16, 64, 128, 257_152, 1152, 27, 4304, 16, 14, 224),
    # CPU-scale training runs (configs/flow_pi0_obstacle.py:runlocal), ~1 M parameters.
    "small": Pi0Size(128, 4, 256, 4, 1, 32, 128, 256, 259, 64, 2, 128, 2, 8, 32),
    # CPU tests.
    "tiny": Pi0Size(32, 2, 64, 2, 1, 8, 16, 32, 259, 16, 1, 32, 2, 8, 32),
}
IMAGE_RESIZE = ("stretch", "pad")


def make_attention_mask(input_mask: jax.Array, ar_mask: jax.Array) -> jax.Array:
    """Block-causal attention mask (big_vision / openpi `make_attn_mask`).

    allowed[b, i, j] = (c_j <= c_i) and input_mask[b, i] and input_mask[b, j],
    c = cumsum(ar_mask): a token with ar_mask 1 starts a new block that earlier tokens
    cannot see; tokens of one block see each other and every earlier block.

    Args:
      input_mask: [B, N] bool, False on padding (invisible, and sees nothing).
      ar_mask: [N] (or [B, N]) bool/int, 1 where a new block starts.
    Returns:
      [B, N, N] bool, query i (row) may attend to key j (column).
    """
    ar_mask = jnp.broadcast_to(jnp.asarray(ar_mask, jnp.int32), input_mask.shape)
    cumsum = jnp.cumsum(ar_mask, axis=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return causal & valid


def posemb_sincos(t: jax.Array, dim: int, min_period=4e-3, max_period=4.0) -> jax.Array:
    """π0's sin-cos embedding of t ∈ [0, 1]: [B] → [B, dim] float32.

    emb(t) = [sin(2π t / p_i), cos(2π t / p_i)], p_i = p_min (p_max / p_min)^(i / (dim/2 - 1)),
    evaluated as openpi does (t * (1 / p * 2 * π), float32).
    """
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    args = jnp.einsum(
        "i,j->ij",
        jnp.asarray(t, jnp.float32),
        1.0 / period * 2 * jnp.pi,
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0):
    """Rotary embedding of [B, N, heads, D] at integer positions [B, N] (Gemma's halves):
    angle_i = position / max_wavelength^(2i / D), rotating (x_i, x_{i + D/2})."""
    half = x.shape[-1] // 2
    timescale = max_wavelength ** ((2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32))
    angle = positions[..., None, None].astype(jnp.float32) / timescale  # [B, N, 1, half]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def resize_with_pad(images: jax.Array, size: int) -> jax.Array:
    """openpi's `resize_with_pad` (tf.image.resize_with_pad) for float images in [-1, 1]:
    [B, h, w, 3] → [B, size, size, 3], aspect ratio kept (bilinear, clipped), padded with
    -1 (black), the odd pixel of padding at the bottom / right."""
    b, h, w, c = images.shape
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    resized = jax.image.resize(images, (b, rh, rw, c), "bilinear").clip(-1.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    pads = ((0, 0), (top, size - rh - top), (left, size - rw - left), (0, 0))
    return jnp.pad(resized, pads, constant_values=-1.0)


class RMSNorm(nn.Module):
    """Gemma's RMSNorm, y = x / rms(x) * (1 + scale); adaptive with a condition [B, C]:
    y = x / rms(x) * (1 + s) + b and a residual gate g, [s, b, g] = Dense_0(cond).

    Returns (y, gate); gate is None without a condition.
    """

    adaptive: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cond=None):
        xf = x.astype(jnp.float32)
        var = jnp.mean(xf * xf, axis=-1, keepdims=True)
        normed = xf * jnp.reciprocal(jnp.sqrt(var + 1e-6))
        if not self.adaptive:
            scale = self.param(
                "scale",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), (AXIS_EMBED,)),
                (x.shape[-1],),
                jnp.float32,
            )
            return (normed * (1 + scale)).astype(self.dtype), None
        # Zero init: s = b = g = 0, so each adaptive residual branch starts switched off.
        mod = layers.dense(
            3 * x.shape[-1],
            (None, AXIS_EMBED),
            dtype=jnp.float32,
            kernel_init=nn.initializers.zeros_init(),
            name="modulation",
        )
        scale, shift, gate = jnp.split(mod(cond.astype(jnp.float32))[:, None, :], 3, axis=-1)
        return (normed * (1 + scale) + shift).astype(self.dtype), gate.astype(self.dtype)


def _gated(x, y, gate):
    return x + y if gate is None else x + y * gate


class ExpertLayer(nn.Module):
    """One expert's weights in one layer: pre-attention norm, q/k/v, out projection, GeGLU."""

    width: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    adaptive: bool = False
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        h, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        proj = functools.partial(layers.dense, dtype=self.dtype, use_bias=False)  # Gemma: no bias
        self.attn_norm = RMSNorm(self.adaptive, self.dtype)
        self.q = proj(h * d, (AXIS_EMBED, AXIS_HEADS), name="q")
        self.kv = proj(2 * kv * d, (AXIS_EMBED, AXIS_HEADS), name="kv")
        self.out = proj(self.width, (AXIS_HEADS, AXIS_EMBED), name="out")
        self.mlp_norm = RMSNorm(self.adaptive, self.dtype)
        self.gate_up = proj(2 * self.mlp_dim, (AXIS_EMBED, AXIS_MLP), name="gate_up")
        self.down = proj(self.width, (AXIS_MLP, AXIS_EMBED), name="down")

    def qkv(self, x, positions, cond=None):
        """[B, N, W] → q [B, N, h, d], k, v [B, N, kv, d] (RoPE on q and k), attn gate."""
        b, n, _ = x.shape
        y, gate = self.attn_norm(x, cond)
        q = self.q(y).reshape(b, n, self.num_heads, self.head_dim)
        k, v = jnp.split(self.kv(y).reshape(b, n, 2 * self.num_kv_heads, self.head_dim), 2, 2)
        return apply_rope(q, positions), apply_rope(k, positions), v, gate

    def finish(self, x, attn, gate, cond=None):
        """Residual out projection, then the residual GeGLU MLP (Gemma, tanh GELU)."""
        b, n, h, d = attn.shape
        x = _gated(x, self.out(attn.reshape(b, n, h * d)), gate)  # no -1: Np may be 0
        y, gate = self.mlp_norm(x, cond)
        g, u = jnp.split(self.gate_up(y), 2, axis=-1)
        return _gated(x, self.down(nn.gelu(g, approximate=True) * u), gate)


class Pi0Layer(nn.Module):
    """Both experts' weights of one layer (`backbone`, `expert`), and the three ways a layer
    runs: prefix only (filling the KV cache), suffix only (reading it), or both jointly."""

    backbone_width: int
    backbone_mlp_dim: int
    expert_width: int
    expert_mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    adaptive: bool = False
    dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"  # layers.ATTENTION_IMPLEMENTATIONS

    def setup(self):
        heads = dict(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                     head_dim=self.head_dim, dtype=self.dtype)  # fmt: skip
        self.backbone = ExpertLayer(self.backbone_width, self.backbone_mlp_dim, **heads)
        self.expert = ExpertLayer(
            self.expert_width, self.expert_mlp_dim, adaptive=self.adaptive, **heads
        )

    def _attend(self, q, k, v, mask):
        return layers.dot_product_attention(q, k, v, mask, implementation=self.attention)

    def prefix(self, x, positions, mask):
        """x [B, Np, W] → (x', (k, v) [B, Np, kv, d])."""
        q, k, v, gate = self.backbone.qkv(x, positions)
        x = self.backbone.finish(x, self._attend(q, k, v, mask), gate)
        return x, (k, v)

    def suffix(self, x, cache, positions, mask, cond):
        """x [B, Ns, We] attending to the cached prefix (k, v) [B, Np, kv, d] and itself."""
        q, k, v, gate = self.expert.qkv(x, positions, cond)
        k = jnp.concatenate([cache[0].astype(k.dtype), k], 1)
        v = jnp.concatenate([cache[1].astype(v.dtype), v], 1)
        return self.expert.finish(x, self._attend(q, k, v, mask), gate, cond)

    def joint(self, xs, positions, mask, cond):
        """(prefix [B, Np, W], suffix [B, Ns, We]) through one joint attention."""
        prefix, suffix = xs
        n_prefix = prefix.shape[1]
        qp, kp, vp, gp = self.backbone.qkv(prefix, positions[:, :n_prefix])
        qs, ks, vs, gs = self.expert.qkv(suffix, positions[:, n_prefix:], cond)
        q = jnp.concatenate([qp, qs.astype(qp.dtype)], 1)
        k = jnp.concatenate([kp, ks.astype(kp.dtype)], 1)
        v = jnp.concatenate([vp, vs.astype(vp.dtype)], 1)
        attn = self._attend(q, k, v, mask)
        prefix = self.backbone.finish(prefix, attn[:, :n_prefix], gp)
        suffix = self.expert.finish(suffix, attn[:, n_prefix:], gs, cond)
        return prefix, suffix


def _scan_layers(body, depth: int, remat, in_axes):
    """`body(layer, carry, *xs) -> (carry, y)` as one `nn.scan` over the stacked layers."""
    policy = vision.checkpoint_policy(remat)
    if policy is not None:
        body = nn.remat(body, policy=policy, prevent_cse=False)
    return nn.scan(
        body,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=in_axes,
        length=depth,
        metadata_params={nn.PARTITION_NAME: layers.AXIS_LAYERS},
    )


def _prefix_body(layer, x, positions, mask):
    return layer.prefix(x, positions, mask)


def _suffix_body(layer, x, cache, positions, mask, cond):
    return layer.suffix(x, cache, positions, mask, cond), None


def _joint_body(layer, xs, positions, mask, cond):
    return layer.joint(xs, positions, mask, cond), None


class Pi0(nn.Module):
    """π0: obs, noisy actions [B, H, A], time [B] → velocity [B, H, A] float32.

    Attributes:
      variant: a key of SIZES ("pi0" real size, "openpi_dummy", "small", "tiny").
      action_dim: A, the model's (padded) action dim; noisy_actions must have it.
      time_conditioning: "mlp" (π0) or "adarms" (adaptive RMSNorm in the expert, π0.5).
      time_scale: the objective's time scale; t = time / time_scale is embedded.
      dtype: activation dtype, "float32" or "bfloat16" (parameters are always float32).
      vocab_size: overrides the variant's vocabulary (e.g. 259 for the byte tokenizer).
      remat: rematerialization of each scanned layer (backbone, expert, ViT) in the
        backward pass: False / "none", True / "full" (nothing saved: activation memory
        O(depth) smaller for ~1/3 more compute), or a `jax.checkpoint_policies` name
        (e.g. "dots_with_no_batch_dims_saveable"). Same parameters and outputs either way.
      state_pad_dim, state_token, camera_order, image_resize: see the module docstring.
      time_min_period, time_max_period: the periods of the sin-cos time embedding.
      attention: the attention implementation of every layer, ViT included
        (layers.ATTENTION_IMPLEMENTATIONS: "einsum", "xla", "cudnn"); the same parameters.
    """

    variant: str = "pi0"
    action_dim: int = 32
    time_conditioning: str = "mlp"
    time_scale: float = 100.0
    dtype: str = "float32"
    vocab_size: int | None = None
    remat: bool | str = False
    state_pad_dim: int | None = None
    state_token: bool = True
    camera_order: tuple[str, ...] | None = None
    image_resize: str = "stretch"
    time_min_period: float = 4e-3
    time_max_period: float = 4.0
    attention: str = "einsum"

    def setup(self):
        s = SIZES[self.variant]
        if self.time_conditioning not in ("mlp", "adarms"):
            raise ValueError(f"time_conditioning must be mlp|adarms: {self.time_conditioning}")
        if self.attention not in layers.ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"model.attention must be one of {layers.ATTENTION_IMPLEMENTATIONS}: "
                f"{self.attention!r}"
            )
        if self.image_resize not in IMAGE_RESIZE:
            raise ValueError(f"image_resize must be one of {IMAGE_RESIZE}: {self.image_resize}")
        dt = jnp.dtype(self.dtype)
        self.size, self.act_dtype = s, dt
        adaptive = self.time_conditioning == "adarms"
        self.vit = vision.ViT(
            s.vit_width, s.vit_depth, s.vit_mlp_dim, s.vit_heads, s.patch_size, dt,
            remat=self.remat, attention=self.attention, name="vit",
        )  # fmt: skip
        proj = functools.partial(layers.dense, dtype=dt)  # π0's own projections have biases
        self.image_proj = proj(s.width, (None, AXIS_EMBED), name="image_proj")
        self.token_embedding = nn.Embed(
            self.vocab_size or s.vocab_size,
            s.width,
            dtype=dt,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), (AXIS_VOCAB, AXIS_EMBED)
            ),
            name="token_embedding",
        )
        self.layers = Pi0Layer(
            s.width, s.mlp_dim, s.expert_width, s.expert_mlp_dim, s.num_heads, s.num_kv_heads,
            s.head_dim, adaptive=adaptive, dtype=dt, attention=self.attention, name="layers",
        )  # fmt: skip
        self.expert_norm = RMSNorm(adaptive, dt)
        ew = s.expert_width
        if self.state_token:
            self.state_proj = proj(ew, (None, AXIS_EMBED), name="state_proj")
        self.action_in_proj = proj(ew, (None, AXIS_EMBED), name="action_in_proj")
        self.time_mlp_in = proj(ew, (None, AXIS_EMBED), name="time_mlp_in")
        self.time_mlp_out = proj(ew, (AXIS_EMBED, AXIS_EMBED), name="time_mlp_out")
        self.action_out_proj = proj(self.action_dim, (AXIS_EMBED, None), name="action_out")

    # ---------------------------------------------------------------- prefix (obs only)

    def _cameras(self, obs: dict) -> list[str]:
        present = sorted(k[len(schema.OBS_IMAGE_PREFIX) :] for k in obs
                         if k.startswith(schema.OBS_IMAGE_PREFIX))  # fmt: skip
        if self.camera_order is None:
            return present
        missing = [c for c in self.camera_order if c not in present]
        if missing:
            raise KeyError(
                f"π0 with camera_order={tuple(self.camera_order)} needs the images "
                f"{[schema.image_key(c) for c in missing]}; the observation has {present} "
                f"(send a placeholder image with {schema.image_mask_key('<camera>')}=False)"
            )
        return list(self.camera_order)

    def _image(self, image: jax.Array) -> jax.Array:
        """[B, h, w, 3] uint8 (or float in [-1, 1]) → float32 [B, S, S, 3] in [-1, 1]."""
        size = self.size.image_size
        if image.dtype == jnp.uint8:
            image = image.astype(jnp.float32) / 255.0 * 2.0 - 1.0
        image = image.astype(jnp.float32)
        if image.shape[1:3] != (size, size):
            if self.image_resize == "pad":
                return resize_with_pad(image, size)
            shape = (image.shape[0], size, size, image.shape[-1])
            image = jax.image.resize(image, shape, "bilinear")
        return image

    def embed_prefix(self, obs: dict):
        """Image and text tokens [B, Np, W] with their input mask [B, Np]."""
        s, dt = self.size, self.act_dtype
        batch = obs[schema.OBS_STATE].shape[0]
        tokens, masks = [], []
        cameras = self._cameras(obs)
        if cameras:
            # One ViT pass over all cameras: [C * B, S, S, 3] (camera-major) instead of C
            # passes at batch B — at serving's B = 1 every GEMM gets C times the rows, and
            # the weights are read once. Rows are independent, so each camera's tokens are
            # what its own pass gives (up to GEMM summation order).
            images = [self._image(jnp.asarray(obs[schema.image_key(c)])[:, -1])  # last frame
                      for c in cameras]  # fmt: skip
            emb = self.image_proj(self.vit(jnp.concatenate(images, 0)))  # [C * B, Ni, W]
            for i, camera in enumerate(cameras):
                present = obs.get(schema.image_mask_key(camera), jnp.ones((batch,), bool))
                tokens.append(emb[i * batch : (i + 1) * batch])
                masks.append(
                    jnp.broadcast_to(jnp.asarray(present, bool)[:, None], tokens[-1].shape[:2])
                )
        if schema.PROMPT_TOKENS in obs:
            ids = jnp.asarray(obs[schema.PROMPT_TOKENS], jnp.int32)
            emb = self.token_embedding(ids)
            tokens.append(emb * jnp.sqrt(jnp.float32(s.width)).astype(emb.dtype))
            masks.append(jnp.asarray(obs.get(schema.PROMPT_MASK, ids != 0), bool))
        if not tokens:  # state-only observation: an empty prefix
            return jnp.zeros((batch, 0, s.width), dt), jnp.zeros((batch, 0), bool)
        return jnp.concatenate(tokens, 1).astype(dt), jnp.concatenate(masks, 1)

    def last_state(self, obs: dict) -> jax.Array:
        """The last state frame [B, S] float32, zero-padded to `state_pad_dim`."""
        state = jnp.asarray(obs[schema.OBS_STATE], jnp.float32)[:, -1]
        if self.state_pad_dim is not None:
            if state.shape[-1] > self.state_pad_dim:
                raise ValueError(
                    f"state dim {state.shape[-1]} > model.state_pad_dim {self.state_pad_dim}"
                )
            state = jnp.pad(state, ((0, 0), (0, self.state_pad_dim - state.shape[-1])))
        return state

    def prepare(self, obs: dict) -> dict:
        """Runs images + text through the backbone once.

        Returns:
          context: {"k", "v": [depth, B, Np, kv, d] (post-RoPE), "prefix_mask": [B, Np] bool,
          "state": [B, S] float32}.
        """
        chex.assert_rank(obs[schema.OBS_STATE], 3)  # [B, T, S]
        x, prefix_mask = self.embed_prefix(obs)
        positions = jnp.cumsum(prefix_mask, axis=1) - 1
        mask = make_attention_mask(prefix_mask, jnp.zeros(prefix_mask.shape[1], jnp.int32))
        scan = _scan_layers(_prefix_body, self.size.depth, self.remat,
                            (nn.broadcast, nn.broadcast))  # fmt: skip
        _, (k, v) = scan(self.layers, x, positions, mask)
        return {"k": k, "v": v, "prefix_mask": prefix_mask, "state": self.last_state(obs)}

    # ---------------------------------------------------------------- suffix (per step)

    def embed_suffix(self, state, noisy_actions, time):
        """[state] + action tokens [B, (1) + H, We], their ar_mask, the adaRMS cond."""
        dt = self.act_dtype
        ew = self.size.expert_width
        batch, horizon, action_dim = noisy_actions.shape
        if action_dim != self.action_dim:
            raise ValueError(
                f"noisy_actions dim {action_dim} != model action_dim {self.action_dim}"
            )
        t = jnp.broadcast_to(jnp.asarray(time, jnp.float32), (batch,)) / self.time_scale
        t_emb = posemb_sincos(t, ew, self.time_min_period, self.time_max_period).astype(dt)
        act = self.action_in_proj(noisy_actions.astype(dt))
        cond = None
        if self.time_conditioning == "mlp":
            t_tok = jnp.broadcast_to(t_emb[:, None], (batch, horizon, ew))
            act = self.time_mlp_in(jnp.concatenate([act, t_tok], -1))
            act = self.time_mlp_out(nn.swish(act))
        else:
            cond = nn.swish(self.time_mlp_out(nn.swish(self.time_mlp_in(t_emb))))
        ar = jnp.zeros(horizon, jnp.int32).at[0].set(1)
        if self.state_token:
            state_tok = self.state_proj(state.astype(dt))[:, None]
            return (
                jnp.concatenate([state_tok, act], 1),
                jnp.concatenate([jnp.ones(1, int), ar]),
                cond,
            )
        return act, ar, cond

    def _actions_out(self, x, cond, horizon):
        x, _ = self.expert_norm(x, cond)
        return self.action_out_proj(x[:, -horizon:]).astype(jnp.float32)

    def apply_with_context(self, context: dict, noisy_actions: jax.Array, time: jax.Array):
        """The suffix [state | actions] through the expert, attending to the cached prefix.

        Args:
          context: from `prepare`.
          noisy_actions: [B, H, A].
          time: [B] (or scalar), t * time_scale.
        Returns:
          velocity [B, H, A] float32.
        """
        batch, horizon, action_dim = layers.check_action_inputs(
            noisy_actions, time, batch=context["state"].shape[0]
        )
        x, ar, cond = self.embed_suffix(context["state"], noisy_actions, time)
        prefix_mask = context["prefix_mask"]
        batch, n_prefix = prefix_mask.shape
        full_mask = jnp.concatenate([prefix_mask, jnp.ones((batch, x.shape[1]), bool)], 1)
        full_ar = jnp.concatenate([jnp.zeros(n_prefix, jnp.int32), ar])
        mask = make_attention_mask(full_mask, full_ar)[:, n_prefix:]
        positions = jnp.sum(prefix_mask, axis=1, keepdims=True) + jnp.arange(x.shape[1])
        scan = _scan_layers(_suffix_body, self.size.depth, self.remat,
                            (0, nn.broadcast, nn.broadcast, nn.broadcast))  # fmt: skip
        x, _ = scan(self.layers, x, (context["k"], context["v"]), positions, mask, cond)
        out = self._actions_out(x, cond, horizon)
        chex.assert_shape(out, (batch, horizon, action_dim))
        return out

    def __call__(self, obs: dict, noisy_actions: jax.Array, time: jax.Array) -> jax.Array:
        """velocity [B, H, A] float32 = apply_with_context(prepare(obs), x, t)."""
        layers.check_model_inputs(obs, noisy_actions, time)
        if self.is_initializing():  # one scan creates both experts' stacked weights
            return self.forward_joint(obs, noisy_actions, time)
        return self.apply_with_context(self.prepare(obs), noisy_actions, time)

    def forward_joint(self, obs: dict, noisy_actions: jax.Array, time: jax.Array):
        """Reference: one pass over the whole sequence with the full block-causal mask
        (openpi's training forward). Equals `__call__` up to float error."""
        prefix, prefix_mask = self.embed_prefix(obs)
        suffix, ar, cond = self.embed_suffix(self.last_state(obs), noisy_actions, time)
        batch, n_prefix = prefix_mask.shape
        input_mask = jnp.concatenate([prefix_mask, jnp.ones((batch, suffix.shape[1]), bool)], 1)
        mask = make_attention_mask(input_mask, jnp.concatenate([jnp.zeros(n_prefix, int), ar]))
        positions = jnp.cumsum(input_mask, axis=1) - 1
        scan = _scan_layers(_joint_body, self.size.depth, self.remat,
                            (nn.broadcast, nn.broadcast, nn.broadcast))  # fmt: skip
        (_, suffix), _ = scan(self.layers, (prefix, suffix), positions, mask, cond)
        return self._actions_out(suffix, cond, noisy_actions.shape[1])
