"""The U-Net's conditional residual block (models/unet1d.py `ConditionalResidualBlock1D`) as
one Pallas kernel: k-tap conv as GEMMs, GroupNorm, Mish, FiLM, second conv, residual.

The block, over x [B, L, C_in] and the condition c [B, D], C = C_out channels, G groups:

  conv_i(z)[t]  = b_i + sum_{j<k} z[t + j - k//2] @ W_i[j]    (zero outside 0 <= t < L)
  GN_i(y)       = (y - mu_bg) / sqrt(var_bg + 1e-5) * gamma_i + beta_i
                  (mu_bg, var_bg over the L x C/G values of sample b, group g)
  mish(y)       = y * tanh(softplus(y))
  [s, f]        = mish(c) @ W_film + b_film                     [B, 2C] (FiLM projection)
  h             = s * mish(GN_0(conv_0(x))) + f                 (FiLM; bias-only: h + f)
  out           = mish(GN_1(conv_1(h))) + (x @ W_r + b_r  if C_in != C  else x)

What runs where (`residual_block`):
  outside the kernel (XLA): the FiLM projection [B, D] @ [D, 2C] (one GEMM; mish(c) is the
    same for every block, so XLA computes it once per step), zero-padding x to the kernel's
    tile sizes, and slicing the output back to L rows;
  inside one `pallas_call`, one program per sample (grid (B,)):
    phase 1, per tile of BN output channels (a whole number of groups, so GroupNorm's
      statistics are local to the tile): the k-tap conv as k GEMMs over BK-channel chunks
      of x (a K-loop), y = sum_j S_j @ (x @ W_0[j]) with S_j [L', L'] the 0/1 shift matrix
      of tap j (S_j[t, u] = 1 iff u = t + j - k//2 and u < L), then + b_0, GroupNorm (group
      sums as one GEMM with the same-group indicator [BN, BN], over the valid rows), Mish,
      FiLM; h (rows >= L zeroed) goes to a scratch output, and the residual 1x1 conv of
      the same x chunks to the output;
    phase 2, per tile: conv_1 of h the same way, GroupNorm, Mish, + residual.
  Phase 2 reads every channel of h, so on a GPU the two phases are separated by a barrier
  (`triton.debug_barrier`: all of a program's writes of h are visible to its reads).
  At batch 1 that is one program streaming all of the block's weights (2 k C² floats:
  40 MB at C = 1024 in float32) through one SM; `split=True` runs the phases as two
  kernels with a grid over (B, channel tiles) instead (C / BN programs each, h through
  memory between them): one more launch, many more programs in flight. Which is faster
  is for a GPU to say (benchmarks/fused_blocks.py --blocks).

GPU lowering: Pallas's Triton backend (pinned with `triton.CompilerParams`; jax 0.10's
default for GPU is Mosaic GPU, whose `pallas_call` path is deprecated). Triton needs
power-of-two tensor sizes and tl.dot operands with every dimension >= 16, so rows are
padded to L' = max(16, next_pow2(L)), input channels to a multiple of 16 (C_in = A = 2 for
the first block), and tiles are BK in {16, 32, 64}, BN = the smallest whole number of
groups >= 16 channels (DP: C/G = 32..256). Every row >= L carries zeros into the GEMMs
and is excluded from the statistics. Exact helper GEMMs (shifts, group sums) run at
`Precision.HIGHEST` (IEEE fp32 in Triton); the conv GEMMs at the default precision, as
the unfused XLA convs. On CPU the kernel runs in Pallas's interpret mode (chosen when
`jax.default_backend() == "cpu"`).

Differentiation: the kernel has no VJP of its own; `with_reference_vjp` gives the fused
forward the backward pass of the unfused block (`jax.custom_vjp`), so training with the
fused forward computes the unfused gradient (and recomputes the unfused forward for it).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from action_gen.models import layers

GROUP_NORM_EPSILON = 1e-5  # layers.group_norm's (PyTorch's)
# Triton's tl.dot needs every operand dimension >= 16.
MIN_DOT_DIM = 16


@dataclasses.dataclass(frozen=True)
class BlockDims:
    """Static sizes of one fused block call.

    Attributes:
      length: L, the valid rows; rows: L' >= L, the padded rows (power of two >= 16).
      c_in, c_in_pad: input channels, and padded to a multiple of 16.
      channels: C (output channels); groups: G; tile: BN (whole groups).
      taps: k (odd); predict_scale: FiLM with scale and bias (else bias only).
      residual_conv: the residual is a 1x1 conv (C_in != C).
    """

    length: int
    rows: int
    c_in: int
    c_in_pad: int
    channels: int
    groups: int
    tile: int
    taps: int
    predict_scale: bool
    residual_conv: bool

    @property
    def num_tiles(self) -> int:
        return self.channels // self.tile


def _chunk(channels: int) -> int:
    """BK, the K-loop's chunk of input channels: 64, 32 or 16 dividing them (else all)."""
    return next((bk for bk in (64, 32, 16) if channels % bk == 0), channels)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_dims(
    length: int, c_in: int, channels: int, groups: int, taps: int, predict_scale: bool
) -> BlockDims:
    """The padded rows and the tiles of a block (see the module docstring)."""
    if channels % groups:
        raise ValueError(f"{channels} channels not divisible into {groups} groups")
    if taps % 2 != 1:
        raise ValueError(f"fused block needs an odd kernel size, got {taps}")
    group_size = channels // groups
    tile = channels  # fewer than 16 channels in all: one tile (CPU only; Triton needs 16)
    for n in range(1, groups + 1):
        if groups % n == 0 and n * group_size >= min(MIN_DOT_DIM, channels):
            tile = n * group_size
            break
    c_in_pad = -(-c_in // MIN_DOT_DIM) * MIN_DOT_DIM
    return BlockDims(
        length=length,
        rows=max(MIN_DOT_DIM, _next_pow2(length)),
        c_in=c_in,
        c_in_pad=c_in_pad,
        channels=channels,
        groups=groups,
        tile=tile,
        taps=taps,
        predict_scale=predict_scale,
        residual_conv=c_in != channels,
    )


def _check_gpu_sizes(d: BlockDims) -> None:
    """Triton's limits: power-of-two tiles, every GEMM dimension >= 16."""
    ok = lambda n: n >= MIN_DOT_DIM and n & (n - 1) == 0  # noqa: E731
    if not (ok(d.tile) and ok(_chunk(d.channels)) and ok(_chunk(d.c_in_pad))):
        raise ValueError(
            f"fused block on a GPU: C={d.channels} in {d.groups} groups gives channel tiles "
            f"of {d.tile} and chunks of {_chunk(d.channels)}; Triton needs powers of two "
            f">= {MIN_DOT_DIM} (use C a multiple of 16 with C / G a power of two)"
        )


# ----------------------------------------------------------------------------- in-kernel math


def _mish(y: jax.Array) -> jax.Array:
    """y * tanh(softplus(y)), softplus(y) = max(y, 0) + log1p(exp(-|y|)) (only ops every
    Pallas backend lowers; equal to layers.mish to float rounding)."""
    softplus = jnp.maximum(y, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(y)))
    return y * jnp.tanh(softplus)


def _exact_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b in float32 at full precision (the 0/1 shift and group matrices)."""
    return jnp.dot(a, b, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _shift_matrix(d: BlockDims, j: int) -> jax.Array:
    """S_j [L', L'] float32: (S_j @ z)[t] = z[t + j - k//2] if that row is in [0, L), else 0."""
    t = lax.broadcasted_iota(jnp.int32, (d.rows, d.rows), 0)
    u = lax.broadcasted_iota(jnp.int32, (d.rows, d.rows), 1)
    return ((u == t + (j - d.taps // 2)) & (u < d.length)).astype(jnp.float32)


def _valid_rows(d: BlockDims, width: int) -> jax.Array:
    """[L', width] bool: row t < L."""
    return lax.broadcasted_iota(jnp.int32, (d.rows, width), 0) < d.length


def _group_norm(y: jax.Array, scale: jax.Array, bias: jax.Array, d: BlockDims) -> jax.Array:
    """GroupNorm of a tile y [L', BN] float32 (whole groups), statistics over rows < L:
    (y - mu) / sqrt(var + eps) * scale + bias, scale and bias [1, BN]."""
    group_size = d.channels // d.groups
    row = lax.broadcasted_iota(jnp.int32, (d.tile, d.tile), 0)
    col = lax.broadcasted_iota(jnp.int32, (d.tile, d.tile), 1)
    # same[c, c'] = 1 iff channels c and c' are in one group: z @ same sums each group.
    same = (lax.div(row, group_size) == lax.div(col, group_size)).astype(jnp.float32)
    valid = _valid_rows(d, d.tile)
    count = float(d.length * group_size)
    mean = jnp.sum(_exact_dot(jnp.where(valid, y, 0.0), same), axis=0, keepdims=True) / count
    centered = jnp.where(valid, y - mean, 0.0)
    var = jnp.sum(_exact_dot(centered * centered, same), axis=0, keepdims=True) / count
    return (y - mean) * lax.rsqrt(var + GROUP_NORM_EPSILON) * scale + bias


def _loop(n: int, body: Callable, init):
    """`lax.fori_loop(0, n, body, init)`; a single iteration inline (no loop to lower)."""
    return body(0, init) if n == 1 else lax.fori_loop(0, n, body, init)


def _offset(i, size: int):
    """i * size, marked as a multiple of size for the GPU compiler when i is traced."""
    return i * size if isinstance(i, int) else pl.multiple_of(i * size, size)


def _conv_tile(src_ref, w_ref, n_w, d: BlockDims, c_src: int, cd, wr_ref=None):
    """The k-tap conv of src [L', c_src] (rows >= L zero) for output channels
    [n_w, n_w + BN) of w [k, c_src, *]: sum_j S_j @ (src @ W[j]) [L', BN] float32, without
    bias. With `wr_ref` [c_src, *] also src @ W_r over the same chunks (the residual conv).
    """
    chunk = _chunk(c_src)
    zeros = jnp.zeros((d.rows, d.tile), jnp.float32)

    def body(i, accs):
        k0 = _offset(i, chunk)
        a = src_ref[:, pl.ds(k0, chunk)].astype(cd)
        out = [
            acc
            + jnp.dot(
                a,
                w_ref[j, pl.ds(k0, chunk), pl.ds(n_w, d.tile)].astype(cd),
                preferred_element_type=jnp.float32,
            )
            for j, acc in enumerate(accs[: d.taps])
        ]
        if wr_ref is not None:
            w_r = wr_ref[pl.ds(k0, chunk), pl.ds(n_w, d.tile)].astype(cd)
            out.append(accs[-1] + jnp.dot(a, w_r, preferred_element_type=jnp.float32))
        return tuple(out)

    init = (zeros,) * (d.taps + (wr_ref is not None))
    accs = _loop(c_src // chunk, body, init)
    y = zeros
    for j in range(d.taps):
        y = y + _exact_dot(_shift_matrix(d, j), accs[j])
    return (y, accs[-1]) if wr_ref is not None else (y, None)


def _row(ref, offset: int | jax.Array, width: int) -> jax.Array:
    """[1, width] float32 from a [1, N] (or squeezed-batch [1, N]) parameter ref."""
    return ref[:, pl.ds(offset, width)].astype(jnp.float32)


def _phase1_tile(refs: dict, n_w, n_scale, n_bias, d: BlockDims, cd):
    """conv_0 → GroupNorm → Mish → FiLM of one tile of output channels; returns
    (h [L', BN] with rows >= L zeroed, the residual conv tile or None), float32."""
    wr = refs["w_res"] if d.residual_conv else None
    y, res = _conv_tile(refs["x"], refs["w0"], n_w, d, d.c_in_pad, cd, wr)
    y = y + _row(refs["b0"], n_w, d.tile)
    y = _group_norm(y, _row(refs["g0"], n_w, d.tile), _row(refs["beta0"], n_w, d.tile), d)
    h = _mish(y)
    if d.predict_scale:
        h = _row(refs["film_scale"], n_scale, d.tile) * h
    h = h + _row(refs["film_bias"], n_bias, d.tile)
    h = jnp.where(_valid_rows(d, d.tile), h, 0.0)  # conv_1 reads zeros outside [0, L)
    if res is not None:
        res = res + _row(refs["b_res"], n_w, d.tile)
    return h, res


def _phase2_tile(refs: dict, n_w, d: BlockDims, cd):
    """conv_1 → GroupNorm → Mish of one tile of output channels, float32 [L', BN]."""
    y, _ = _conv_tile(refs["h"], refs["w1"], n_w, d, d.channels, cd)
    y = y + _row(refs["b1"], n_w, d.tile)
    y = _group_norm(y, _row(refs["g1"], n_w, d.tile), _row(refs["beta1"], n_w, d.tile), d)
    return _mish(y)


# ----------------------------------------------------------------------------- the kernels

# Names of the kernel inputs, in order (film_scale and film_bias are the same [B, 1, 2C]
# (or [B, 1, C]) array, read at the scale's and at the bias's offsets).
_PARAM_INPUTS = ("w0", "b0", "g0", "beta0", "w1", "b1", "g1", "beta1")
_RESIDUAL_INPUTS = ("w_res", "b_res")


def _input_names(d: BlockDims) -> tuple[str, ...]:
    res = _RESIDUAL_INPUTS if d.residual_conv else ()
    return ("x", "film_scale", "film_bias", *_PARAM_INPUTS, *res)


def _fused_kernel(*refs, d: BlockDims, cd, interpret: bool):
    """One program per sample: phase 1 over all tiles, barrier, phase 2 over all tiles."""
    names = _input_names(d)
    r = dict(zip(names, refs[: len(names)], strict=True))
    out_ref, h_ref = refs[len(names) :]
    r["h"] = h_ref
    bias_offset = d.channels if d.predict_scale else 0

    def phase1(n, carry):
        n0 = _offset(n, d.tile)
        h, res = _phase1_tile(r, n0, n0, bias_offset + n0, d, cd)
        h_ref[:, pl.ds(n0, d.tile)] = h.astype(h_ref.dtype)
        if res is not None:  # the output tile holds the residual until phase 2
            out_ref[:, pl.ds(n0, d.tile)] = res.astype(out_ref.dtype)
        return carry

    _loop(d.num_tiles, phase1, 0)
    if not interpret:
        from jax.experimental.pallas import triton as pl_triton

        pl_triton.debug_barrier()  # phase 2 reads h written by every thread of the program

    def phase2(n, carry):
        n0 = _offset(n, d.tile)
        y = _phase2_tile(r, n0, d, cd)
        if d.residual_conv:
            res = out_ref[:, pl.ds(n0, d.tile)]
        else:
            res = r["x"][:, pl.ds(n0, d.tile)]
        out_ref[:, pl.ds(n0, d.tile)] = (y + res.astype(jnp.float32)).astype(out_ref.dtype)
        return carry

    _loop(d.num_tiles, phase2, 0)


def _split_kernel_1(*refs, d: BlockDims, cd):
    """Phase 1 of one (sample, tile) program: h tile (and residual tile)."""
    names = _input_names(d)
    r = dict(zip(names, refs[: len(names)], strict=True))
    h_ref, *res_ref = refs[len(names) :]
    h, res = _phase1_tile(r, 0, 0, 0, d, cd)
    h_ref[...] = h.astype(h_ref.dtype)
    if res is not None:
        res_ref[0][...] = res.astype(res_ref[0].dtype)


def _split_kernel_2(*refs, d: BlockDims, cd):
    """Phase 2 of one (sample, tile) program: output tile = conv_1 path + residual tile."""
    names = ("h", "res", "w1", "b1", "g1", "beta1")
    r = dict(zip(names, refs[: len(names)], strict=True))
    out_ref = refs[len(names)]
    y = _phase2_tile(r, 0, d, cd)
    out_ref[...] = (y + r["res"][...].astype(jnp.float32)).astype(out_ref.dtype)


def _compiler_params(interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=4, num_stages=1)


# ----------------------------------------------------------------------------- the wrapper


def default_interpret() -> bool:
    """Pallas interpret mode where there is no GPU lowering: the CPU backend."""
    return jax.default_backend() == "cpu"


def film_projection(params: dict, cond: jax.Array) -> jax.Array:
    """[s, f] = mish(c) @ W_film + b_film: [B, 2C] (bias only: [B, C]), as layers.FiLM."""
    dense = params["film"]["cond_encoder"]
    return jnp.dot(layers.mish(cond), dense["kernel"]) + dense["bias"]


def _kernel_operands(params: dict, x: jax.Array, film: jax.Array, d: BlockDims) -> dict:
    """The kernel's inputs by name: x padded to [B, L', C_in'], 1-D parameters as [1, C]."""
    pad_c = d.c_in_pad - d.c_in
    b0, b1 = params["block0"], params["block1"]
    ops = {
        "x": jnp.pad(x, ((0, 0), (0, d.rows - d.length), (0, pad_c))),
        "film_scale": film[:, None, :],
        "film_bias": film[:, None, :],
        "w0": jnp.pad(b0["conv"]["kernel"], ((0, 0), (0, pad_c), (0, 0))),
        "b0": b0["conv"]["bias"][None],
        "g0": b0["norm"]["scale"][None],
        "beta0": b0["norm"]["bias"][None],
        "w1": b1["conv"]["kernel"],
        "b1": b1["conv"]["bias"][None],
        "g1": b1["norm"]["scale"][None],
        "beta1": b1["norm"]["bias"][None],
    }
    if d.residual_conv:
        res = params["residual_conv"]
        ops["w_res"] = jnp.pad(res["kernel"][0], ((0, pad_c), (0, 0)))
        ops["b_res"] = res["bias"][None]
    return ops


def _full(shape) -> pl.BlockSpec:
    """The whole array in every program (grid of any rank)."""
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def residual_block(
    params: dict,
    x: jax.Array,
    cond: jax.Array,
    *,
    n_groups: int,
    cond_predict_scale: bool = True,
    out_dtype=None,
    split: bool = False,
    interpret: bool | None = None,
) -> jax.Array:
    """The fused forward pass of `ConditionalResidualBlock1D` (module docstring).

    Args:
      params: the block's parameter tree, as the unfused module's: block0/block1
        {conv: {kernel [k, C_in|C, C], bias [C]}, norm: {scale [C], bias [C]}},
        film {cond_encoder: {kernel [D, 2C | C], bias}}, residual_conv (iff C_in != C)
        {kernel [1, C_in, C], bias [C]}.
      x: [B, L, C_in].
      cond: [B, D].
      n_groups: G (GroupNorm groups of both convs).
      cond_predict_scale: FiLM with scale and bias (as the module's attribute).
      out_dtype: the output dtype (default: that of x and the conv kernel, promoted).
      split: two kernels over (B, channel tiles) instead of one over B.
      interpret: Pallas interpret mode; None: on the CPU backend only.
    Returns:
      [B, L, C].
    """
    interpret = default_interpret() if interpret is None else interpret
    batch, length, c_in = x.shape
    taps, _, channels = params["block0"]["conv"]["kernel"].shape
    d = block_dims(length, c_in, channels, n_groups, taps, cond_predict_scale)
    cd = jnp.result_type(x.dtype, params["block0"]["conv"]["kernel"].dtype)
    out_dtype = cd if out_dtype is None else out_dtype
    if not interpret:
        _check_gpu_sizes(d)
    ops = _kernel_operands(params, x, film_projection(params, cond), d)
    call = _split_call if split else _fused_call
    return call(ops, d, cd, out_dtype, interpret)[:, :length]


def _fused_call(ops: dict, d: BlockDims, cd, out_dtype, interpret: bool):
    batch = ops["x"].shape[0]
    names = _input_names(d)
    sample = lambda width: pl.BlockSpec((None, d.rows, width), lambda b: (b, 0, 0))  # noqa: E731
    film_width = ops["film_scale"].shape[-1]
    specs = {
        "x": sample(d.c_in_pad),
        "film_scale": pl.BlockSpec((None, 1, film_width), lambda b: (b, 0, 0)),
        "film_bias": pl.BlockSpec((None, 1, film_width), lambda b: (b, 0, 0)),
    }
    in_specs = [specs.get(n) or _full(ops[n].shape) for n in names]
    out_shape = [
        jax.ShapeDtypeStruct((batch, d.rows, d.channels), out_dtype),
        jax.ShapeDtypeStruct((batch, d.rows, d.channels), cd),  # h, scratch
    ]
    out, _ = pl.pallas_call(
        functools.partial(_fused_kernel, d=d, cd=cd, interpret=interpret),
        out_shape=out_shape,
        grid=(batch,),
        in_specs=in_specs,
        out_specs=[sample(d.channels), sample(d.channels)],
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="fused_residual_block",
    )(*(ops[n] for n in names))
    return out


def _split_call(ops: dict, d: BlockDims, cd, out_dtype, interpret: bool):
    batch = ops["x"].shape[0]
    n_tiles, bn, rows = d.num_tiles, d.tile, d.rows
    tile_out = pl.BlockSpec((None, rows, bn), lambda b, n: (b, 0, n))
    per_tile_row = pl.BlockSpec((1, bn), lambda b, n: (0, n))  # [1, C] parameters
    bias_tiles = n_tiles if d.predict_scale else 0
    specs = {
        "x": pl.BlockSpec((None, rows, d.c_in_pad), lambda b, n: (b, 0, 0)),
        "film_scale": pl.BlockSpec((None, 1, bn), lambda b, n: (b, 0, n)),
        "film_bias": pl.BlockSpec((None, 1, bn), lambda b, n: (b, 0, n + bias_tiles)),
        "w0": pl.BlockSpec((d.taps, d.c_in_pad, bn), lambda b, n: (0, 0, n)),
        "w1": pl.BlockSpec((d.taps, d.channels, bn), lambda b, n: (0, 0, n)),
        "w_res": pl.BlockSpec((d.c_in_pad, bn), lambda b, n: (0, n)),
    }
    names1 = _input_names(d)
    in_specs1 = [specs.get(n, per_tile_row) for n in names1]
    out_shape1 = [jax.ShapeDtypeStruct((batch, rows, d.channels), cd)]
    if d.residual_conv:
        out_shape1.append(jax.ShapeDtypeStruct((batch, rows, d.channels), cd))
    h, *res = pl.pallas_call(
        functools.partial(_split_kernel_1, d=d, cd=cd),
        out_shape=out_shape1,
        grid=(batch, n_tiles),
        in_specs=in_specs1,
        out_specs=[tile_out] * len(out_shape1),
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="fused_residual_block_phase1",
    )(*(ops[n] for n in names1))
    # The identity residual: x itself (C_in == C, so x is unpadded in channels).
    res = res[0] if res else ops["x"]
    names2 = ("w1", "b1", "g1", "beta1")
    in_specs2 = [
        pl.BlockSpec((None, rows, d.channels), lambda b, n: (b, 0, 0)),  # all of h
        tile_out,  # the residual's tile
        *(specs.get(n, per_tile_row) for n in names2),
    ]
    return pl.pallas_call(
        functools.partial(_split_kernel_2, d=d, cd=cd),
        out_shape=jax.ShapeDtypeStruct((batch, rows, d.channels), out_dtype),
        grid=(batch, n_tiles),
        in_specs=in_specs2,
        out_specs=tile_out,
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
        name="fused_residual_block_phase2",
    )(h, res, *(ops[n] for n in names2))


def with_reference_vjp(fused: Callable, reference: Callable) -> Callable:
    """`fused(params, x, cond)` whose gradient is that of `reference(params, x, cond)`.

    jax.custom_vjp: the forward pass runs `fused` and saves its inputs; the backward pass
    is `jax.vjp(reference, params, x, cond)` at them (the reference's forward recomputed).
    Both functions must compute the same output (shape and dtype).
    """

    @jax.custom_vjp
    def f(params, x, cond):
        return fused(params, x, cond)

    def forward(params, x, cond):
        return fused(params, x, cond), (params, x, cond)

    def backward(saved, g):
        _, vjp = jax.vjp(reference, *saved)
        return vjp(g)

    f.defvjp(forward, backward)
    return f
