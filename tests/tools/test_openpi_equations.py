"""The importer's rules checked against openpi's own equations, not against our inverse.

Each openpi parameter layout is evaluated in numpy with the einsum / formula openpi's
modules apply to it (openpi @15a9616: models/gemma.py Attention, FeedForward, RMSNorm;
models/lora.py Einsum and FeedForward; models/siglip.py Encoder1DBlock via flax
MultiHeadDotProductAttention / DenseGeneral; models/pi0.py posemb_sincos), on random weights
with every dimension different (width 12, heads 3 of size 5, kv heads 1, MLP 7, ViT width
8 with 2 heads of 4, patch 2), then compared with our modules running the weights the
importer's rule made (`openpi_import.to_ours` kinds). A transposed or mis-split kernel, a
missing 1 + scale or a swapped gate / up half cannot pass.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen.models import pi0, vision
from action_gen.tools import openpi_import

W, HEADS, KV, HEAD_DIM, MLP = 12, 3, 1, 6, 7  # RoPE needs an even head dim
RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _ours(kind: str, *arrays, stacked: bool = True):
    """Our leaf from openpi's arrays by the importer's rule of `kind` (through a depth axis
    of one layer for the stacked layers' rules)."""
    if not stacked:
        return openpi_import._KINDS[kind][0](list(arrays))
    return openpi_import._KINDS[kind][0]([a[None] for a in arrays])[0]


# ------------------------------------------------------------------------ openpi, numpy


def openpi_rmsnorm(x, scale):
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return x * np.reciprocal(np.sqrt(var + 1e-06)) * (1 + scale)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def openpi_feed_forward(x, gating, linear):
    gate = gelu_tanh(np.dot(x, gating[0]))
    return np.dot(gate * np.dot(x, gating[1]), linear)


def openpi_layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def openpi_siglip_block(x, p):
    """models/siglip.py Encoder1DBlock: x + MHA(LN x), + MlpBlock(LN x)."""
    y = openpi_layer_norm(x, p["ln0_scale"], p["ln0_bias"])
    q = np.einsum("btd,dnh->btnh", y, p["query"]) + p["query_bias"]
    k = np.einsum("btd,dnh->btnh", y, p["key"]) + p["key_bias"]
    v = np.einsum("btd,dnh->btnh", y, p["value"]) + p["value_bias"]
    logits = np.einsum("btnh,bsnh->bnts", q / math.sqrt(q.shape[-1]), k)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("bnts,bsnh->btnh", probs, v)
    x = x + np.einsum("btnh,nhd->btd", attn, p["out"]) + p["out_bias"]
    y = openpi_layer_norm(x, p["ln1_scale"], p["ln1_bias"])
    y = gelu_tanh(y @ p["mlp0"] + p["mlp0_bias"]) @ p["mlp1"] + p["mlp1_bias"]
    return x + y


# ------------------------------------------------------------------------------ tests


def test_gemma_attention_and_mlp_rules_follow_openpis_einsums():
    """q / kv / attention-out / gating / linear rules against Attention's "BTD,NDH->BTNH",
    "BSD,2KDH->2BSKH", "BTNH,NHD->BTD" and FeedForward's dot products; RMSNorm (1 + scale)
    with a non-zero scale."""
    q_w, kv_w = _rand(HEADS, W, HEAD_DIM), _rand(2, KV, W, HEAD_DIM)
    out_w, gating, linear = _rand(HEADS, HEAD_DIM, W), _rand(2, W, MLP), _rand(MLP, W)
    attn_scale, mlp_scale = _rand(W), _rand(W)
    layer = pi0.ExpertLayer(W, MLP, HEADS, KV, HEAD_DIM)
    params = {
        "attn_norm": {"scale": attn_scale},
        "q": {"kernel": _ours("q", q_w)},
        "kv": {"kernel": _ours("kv", kv_w)},
        "out": {"kernel": _ours("out", out_w)},
        "mlp_norm": {"scale": mlp_scale},
        "gate_up": {"kernel": _ours("gate_up", gating)},
        "down": {"kernel": _ours("same", linear)},
    }
    x = _rand(2, 4, W)
    positions = jnp.zeros((2, 4), jnp.int32)  # RoPE at position 0 is the identity
    q, k, v, _ = layer.apply({"params": params}, x, positions, method=pi0.ExpertLayer.qkv)
    y = openpi_rmsnorm(x, attn_scale)
    np.testing.assert_allclose(q, np.einsum("BTD,NDH->BTNH", y, q_w), rtol=1e-5, atol=1e-5)
    k_want, v_want = np.einsum("BSD,CKDH->CBSKH", y, kv_w)  # openpi's "BSD,2KDH->2BSKH"
    np.testing.assert_allclose(k, k_want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, v_want, rtol=1e-5, atol=1e-5)

    encoded = _rand(2, 4, HEADS, HEAD_DIM)
    got = layer.apply({"params": params}, x, encoded, None, method=pi0.ExpertLayer.finish)
    h = x + np.einsum("BTNH,NHD->BTD", encoded, out_w)
    want = h + openpi_feed_forward(openpi_rmsnorm(h, mlp_scale), gating, linear)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_adaptive_rmsnorm_rule_follows_openpis_modulation():
    """π0.5's adaRMSNorm: Dense_0(cond) split into scale, shift, gate (openpi's order)."""
    kernel, bias, cond, x = _rand(6, 3 * W), _rand(3 * W), _rand(2, 6), _rand(2, 4, W)
    norm = pi0.RMSNorm(adaptive=True)
    params = {"modulation": {"kernel": kernel, "bias": bias}}
    got, gate = norm.apply({"params": params}, x, cond)
    scale, shift, want_gate = np.split((cond @ kernel + bias)[:, None, :], 3, axis=-1)
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    want = x / np.sqrt(var + 1e-6) * (1 + scale) + shift
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gate, np.broadcast_to(want_gate, gate.shape), rtol=1e-5)


def test_siglip_rules_follow_openpis_encoder_block():
    """ViT block: q / k / v [D, n, h] and out [n, h, D] (DenseGeneral), biases, LayerNorms
    and the MLP, against the block computed in openpi's layout."""
    width, heads, head_dim, mlp = 8, 2, 4, 6
    p = {
        "query": _rand(width, heads, head_dim), "key": _rand(width, heads, head_dim),
        "value": _rand(width, heads, head_dim), "query_bias": _rand(heads, head_dim),
        "key_bias": _rand(heads, head_dim), "value_bias": _rand(heads, head_dim),
        "out": _rand(heads, head_dim, width), "out_bias": _rand(width),
        "ln0_scale": _rand(width), "ln0_bias": _rand(width),
        "ln1_scale": _rand(width), "ln1_bias": _rand(width),
        "mlp0": _rand(width, mlp), "mlp0_bias": _rand(mlp),
        "mlp1": _rand(mlp, width), "mlp1_bias": _rand(width),
    }  # fmt: skip
    ours = {
        "ln_attn": {"scale": p["ln0_scale"], "bias": p["ln0_bias"]},
        "qkv": {
            "kernel": _ours("vit_qkv", p["query"], p["key"], p["value"]),
            "bias": _ours("vit_qkv_bias", p["query_bias"], p["key_bias"], p["value_bias"]),
        },
        "out": {"kernel": _ours("vit_out", p["out"]), "bias": p["out_bias"]},
        "ln_mlp": {"scale": p["ln1_scale"], "bias": p["ln1_bias"]},
        "mlp_in": {"kernel": p["mlp0"], "bias": p["mlp0_bias"]},
        "mlp_out": {"kernel": p["mlp1"], "bias": p["mlp1_bias"]},
    }
    x = _rand(2, 5, width)
    block = vision.EncoderBlock(mlp_dim=mlp, num_heads=heads)
    got, _ = block.apply({"params": ours}, x)
    np.testing.assert_allclose(got, openpi_siglip_block(x, p), rtol=1e-4, atol=1e-4)


def test_patch_embedding_rule_is_siglips_conv():
    """The conv kernel [p, p, 3, D] flattened (rule "patch") on our patchify equals
    SigLIP's stride-p conv ("VALID", NHWC / HWIO)."""
    p, width = 2, 8
    kernel, bias = _rand(p, p, 3, width), _rand(width)
    images = _rand(1, 6, 4, 3)
    conv = jax.lax.conv_general_dilated(
        images, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    want = np.asarray(conv).reshape(1, -1, width) + bias
    ours = _ours("patch", kernel, stacked=False)
    got = vision.patchify(jnp.asarray(images), p) @ ours + bias  # the ViT's first layer
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [0.0, 0.001, 0.37, 1.0])
def test_time_embedding_at_known_values(t):
    """π0's posemb_sincos(t, 8, 4e-3, 4.0): periods 4e-3 · 1000^(i/3), i = 0..3, arguments
    t · (1 / p · 2π) formed in float32 as openpi does (at t = 1 the shortest period's
    argument is 1571: float32 rounding there moves sin by ~5e-5, the same in openpi)."""
    fraction = np.linspace(0.0, 1.0, 4).astype(np.float32)
    periods = np.float32(4e-3) * (np.float32(4.0) / np.float32(4e-3)) ** fraction
    args = np.float32(t) * (np.float32(1.0) / periods * np.float32(2 * np.pi))
    want = np.concatenate([np.sin(args.astype(np.float64)), np.cos(args.astype(np.float64))])
    got = pi0.posemb_sincos(jnp.asarray([t]), 8)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    exact = 2 * np.pi * t / (4e-3 * 1000.0 ** (np.arange(4) / 3))  # the real-number values
    np.testing.assert_allclose(got[:4], np.sin(exact), atol=1e-4)
    if t == 0.0:
        np.testing.assert_array_equal(got, [0, 0, 0, 0, 1, 1, 1, 1])


def test_merge_lora_equals_openpis_lora_einsum():
    """merge_lora's w + s·a@b gives the output of openpi's LoRA Einsum (the base einsum plus
    the two adapter einsums, times alpha / rank) for q, kv and attention-out layouts, and
    of its LoRA FeedForward."""
    rank, scale = 2, 0.5
    x = _rand(2, 4, W)
    cases = {
        # name: (w, lora_a, lora_b, eqn, eqn_a, eqn_b)
        "attn/q_einsum": (
            _rand(HEADS, W, HEAD_DIM), _rand(HEADS, W, rank), _rand(HEADS, rank, HEAD_DIM),
            "BTD,NDH->BTNH", "BTD,NDL->BTNL", "BTNL,NLH->BTNH",
        ),
        "attn/kv_einsum": (
            _rand(2, KV, W, HEAD_DIM), _rand(2, KV, W, rank), _rand(2, KV, rank, HEAD_DIM),
            # openpi's "BSD,2KDH->2BSKH" (numpy's einsum takes letters only: C for 2).
            "BSD,CKDH->CBSKH", "BSD,CKDL->CBSKL", "CBSKL,CKLH->CBSKH",
        ),
    }  # fmt: skip
    for name, (w, a, b, eqn, eqn_a, eqn_b) in cases.items():
        flat = {f"{name}/w": w, f"{name}/lora_a": a, f"{name}/lora_b": b}
        merged = openpi_import.merge_lora(flat, scale)
        assert set(merged) == {f"{name}/w"}
        want = np.einsum(eqn, x, w) + np.einsum(eqn_b, np.einsum(eqn_a, x, a), b) * scale
        np.testing.assert_allclose(
            np.einsum(eqn, x, merged[f"{name}/w"]), want, rtol=1e-4, atol=1e-4
        )
    enc = _rand(2, 4, HEADS, HEAD_DIM)
    w, a, b = _rand(HEADS, HEAD_DIM, W), _rand(HEADS, HEAD_DIM, rank), _rand(HEADS, rank, W)
    merged = openpi_import.merge_lora({"o/w": w, "o/lora_a": a, "o/lora_b": b}, scale)["o/w"]
    want = np.einsum("BTNH,NHD->BTD", enc, w) + scale * np.einsum(
        "BTNL,NLD->BTD", np.einsum("BTNH,NHL->BTNL", enc, a), b
    )
    np.testing.assert_allclose(np.einsum("BTNH,NHD->BTD", enc, merged), want, rtol=1e-4, atol=1e-4)
    # FeedForward's named LoRA leaves (`<name>_lora_a`): gating [2, D, F], linear [F, D].
    gating, ga, gb = _rand(2, W, MLP), _rand(2, W, rank), _rand(2, rank, MLP)
    linear, la, lb = _rand(MLP, W), _rand(MLP, rank), _rand(rank, W)
    flat = {"mlp/gating_einsum": gating, "mlp/gating_einsum_lora_a": ga,
            "mlp/gating_einsum_lora_b": gb, "mlp/linear": linear, "mlp/linear_lora_a": la,
            "mlp/linear_lora_b": lb}  # fmt: skip
    merged = openpi_import.merge_lora(flat, scale)
    assert set(merged) == {"mlp/gating_einsum", "mlp/linear"}

    def lora_ff(x):  # openpi's lora.FeedForward._dot with adapters
        def dot(x, w, wa, wb):
            return np.dot(x, w) + np.dot(np.dot(x, wa), wb) * scale

        gate = gelu_tanh(dot(x, gating[0], ga[0], gb[0]))
        return dot(gate * dot(x, gating[1], ga[1], gb[1]), linear, la, lb)

    np.testing.assert_allclose(
        openpi_feed_forward(x, merged["mlp/gating_einsum"], merged["mlp/linear"]),
        lora_ff(x),
        rtol=1e-4,
        atol=1e-4,
    )
