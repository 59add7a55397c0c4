"""The U-Net's fused residual blocks (`model.fused_blocks`, models/fused_block.py) against
the XLA blocks: DDIM-10 chunk time and the kernels of one denoising step, batch 1.

  python benchmarks/fused_blocks.py --model dp --runs 20        # a GPU: DP's low-dim U-Net
  python benchmarks/fused_blocks.py --model tiny --runs 3       # CPU check (interpret mode)

For `fused_blocks` off and on (the same parameters): the scanned DDIM-10 chunk
(benchmarks/sampler.py `time_scan`: median ms, compile s, launches per loop iteration),
and the optimized HLO of one denoising step (the U-Net on `prepare`'s context plus the
DDIM update, jitted alone) counted by kind: fusions (by fusion kind), custom calls (by
target: cuBLAS GEMMs, Pallas/Triton kernels, ...), unfused dots, copies, other ops, and
while loops; and the two chunks' max |difference| (the fused kernels checked on the
device). `--blocks` adds single-block timings and max |difference| from the XLA block (one
kernel, `split`: two kernels, XLA) at two DP sizes: the bottom (C = 1024, L = 4) and the
first block (C_in = 2 → 256, L = 16).

On CPU the Pallas kernel runs in interpret mode: it lowers to a while loop of ordinary
HLO (counted under "while" with its body's ops apart), and XLA:CPU's fusions are loops in
one program, not kernel launches; only a GPU's counts measure launches.
Prints one JSON object at the end, and each variant's figures as a JSON line on stderr as
soon as they exist (a run cut off by a timeout keeps them).
"""

import collections
import functools
import json
import os
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from timing import device_report, median_ms  # benchmarks/timing.py

# Runnable from a plain checkout (the GPU machine has no install of this package).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sampler  # noqa: E402  (benchmarks/sampler.py)

from action_gen import cli, models  # noqa: E402
from action_gen.data import schema  # noqa: E402
from action_gen.models import fused_block, unet1d  # noqa: E402
from action_gen.objectives import diffusion  # noqa: E402

NUM_STEPS = 10
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*")
_OPCODE = re.compile(r"\s*([a-z][\w\-]*)\(")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r"kind=(k\w+)")
_BACKEND_KIND = re.compile(r'"kind":"([^"]+)"')
# Instructions that launch nothing (as sampler._NOT_KERNELS, less while: counted apart).
_NOT_KERNELS = set(sampler._NOT_KERNELS) - {"while"}  # call: counted through


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    computations, entry, name = {}, None, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            name = header.group(2)
            computations[name] = []
            entry = name if header.group(1) else entry
        elif name is not None and line.strip() and line.strip() != "}":
            computations[name].append(line)
    return computations, entry


def _closing_paren(text: str) -> int:
    """Index of the parenthesis closing the one `text` starts with."""
    depth = 0
    for index, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return index
    return len(text)


def _opcode(line: str) -> str | None:
    """The opcode of `name = type opcode(...)`, the type a shape or a (nested) tuple."""
    name = _NAME.match(line)
    if not name:
        return None
    rest = line[name.end() :]
    end = _closing_paren(rest) if rest.startswith("(") else rest.find(" ")  # the type's end
    match = _OPCODE.match(rest, end + 1)
    return match.group(1) if match else None


def op_kind(line: str) -> str | None:
    """'fusion:kLoop', 'fusion:kCustom:__cublas$gemm', 'custom-call:__gpu$xla.gpu.triton',
    'dot', 'copy', ... for an HLO instruction line; None for a non-instruction or one that
    launches nothing."""
    opcode = _opcode(line)
    if opcode is None or opcode in _NOT_KERNELS:
        return None
    if opcode == "custom-call":
        target = _TARGET.search(line)
        return f"custom-call:{target.group(1) if target else '?'}"
    if opcode == "fusion":
        kind = _FUSION_KIND.search(line)
        backend = _BACKEND_KIND.search(line)
        label = f"fusion:{kind.group(1) if kind else '?'}"
        return label + (f":{backend.group(1)}" if backend else "")
    return opcode


def count_ops(hlo_text: str) -> dict:
    """The entry computation's launches by kind ("ops", their "total"), and its while
    loops ("while", each body's ops summed in "ops_inside_while"); `call`s (XLA:CPU keeps
    some) are counted through, and loops nested in a loop body count as inside it."""
    computations, entry = _computations(hlo_text)
    ops, inside = collections.Counter(), collections.Counter()
    loops = 0

    def visit(comp: str, counter: collections.Counter, top: bool) -> None:
        nonlocal loops
        for line in computations.get(comp, ()):
            opcode = _opcode(line)
            if opcode in ("while", "call"):
                loops += opcode == "while" and top
                body = re.search(r"(?:body|to_apply)=%?([\w.\-]+)", line)
                nested_top = top and opcode == "call"
                visit(body.group(1) if body else "", counter if nested_top else inside, nested_top)
            elif kind := op_kind(line):
                counter[kind] += 1

    visit(entry, ops, True)
    return {
        "total": sum(ops.values()),
        "ops": dict(sorted(ops.items())),
        "while": loops,
        "ops_inside_while": dict(sorted(inside.items())),
    }


def build(model_name: str, batch: int, fused: bool, params=None) -> sampler.Setup:
    """benchmarks/sampler.py's model `model_name` with `fused_blocks=fused` (`params`: an
    earlier build's, shared)."""
    workload = sampler.MODELS[model_name]
    model = models.create_model({**workload.config, "fused_blocks": fused})
    obs = sampler.observation(workload, batch)
    if params is None:
        params = models.init_params(model, jax.random.key(0), obs, (sampler.H, sampler.A))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    return sampler.Setup(models.make_apply_fn(model), params, obs, int(num_params))


def step_hlo(setup: sampler.Setup) -> str:
    """Optimized HLO of one DDIM denoising step: the U-Net on the chunk's context, then
    the update x_k → x_k'."""
    context = setup.apply_fn.prepare(setup.params, setup.obs)
    batch = setup.obs[schema.OBS_STATE].shape[0]
    x = jnp.zeros((batch, sampler.H, sampler.A), jnp.float32)

    def step(params, context, x, k, alpha_bar, alpha_bar_prev):
        t = jnp.full((x.shape[0],), k, jnp.float32)
        out = setup.apply_fn.apply(params, context, x, t).astype(jnp.float32)
        return diffusion.ddim_step(x, out, alpha_bar, alpha_bar_prev, None)

    args = (setup.params, context, x, np.float32(50.0), np.float32(0.5), np.float32(0.6))
    return jax.jit(step).lower(*args).compile().as_text()


def _progress(label: str, value) -> None:
    """One JSON line on stderr as soon as a figure exists (a run cut off keeps them)."""
    print(json.dumps({label: value}), file=sys.stderr, flush=True)


def compare(model_name: str = "dp", batch: int = 1, runs: int = 20) -> dict:
    """DDIM-10 chunk and one step's kernels, `fused_blocks` off and on, same parameters;
    a variant that fails (e.g. a kernel the GPU compiler rejects) is reported as its error.
    """
    results, chunks, params = {}, {}, None
    for fused in (False, True):
        label = "fused" if fused else "unfused"
        try:
            setup = build(model_name, batch, fused, params)
            params = setup.params
            scan = sampler.time_scan(setup, "ddim", NUM_STEPS, runs)
            chunks[fused] = np.asarray(
                jax.jit(sampler.sample_fn(setup.apply_fn, "ddim", NUM_STEPS))(
                    setup.params, setup.obs, jax.random.key(0)
                )
            )
            results[label] = {
                "ddim10_ms": round(scan["ms"], 3),
                "ddim10_ms_per_step": round(scan["ms"] / NUM_STEPS, 3),
                "compile_s": round(scan["compile_s"], 2),
                "scan_kernels_per_iteration": scan["kernels_per_iteration"],
                "step": count_ops(step_hlo(setup)),
            }
        except Exception as e:  # record, go on: the other variant's figures still count
            results[label] = {"error": repr(e)[:2000]}
        _progress(label, results[label])
    results["params"] = sum(x.size for x in jax.tree.leaves(params)) if params else None
    if len(chunks) == 2:
        results["chunk_max_abs_diff"] = float(np.max(np.abs(chunks[True] - chunks[False])))
    return results


def _block_fns(length: int, c_in: int, channels: int, groups: int = 8, cond_dim: int = 296):
    module = unet1d.ConditionalResidualBlock1D(channels, 5, groups)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, length, c_in)), jnp.float32)
    cond = jnp.asarray(rng.normal(size=(1, cond_dim)), jnp.float32)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), x, cond)["params"])
    fns = {
        "xla": lambda p, x, c: module.apply({"params": p}, x, c),
        "fused": functools.partial(fused_block.residual_block, n_groups=groups),
        "fused_split": functools.partial(fused_block.residual_block, n_groups=groups, split=True),
    }
    return fns, params, x, cond


def block_timings(runs: int, sizes=((4, 1024, 1024), (16, 2, 256))) -> dict:
    """Median ms of one residual block (batch 1) per implementation at (L, C_in, C), and
    each fused output's max |difference| from the XLA block's."""
    out = {}
    for length, c_in, channels in sizes:
        fns, params, x, cond = _block_fns(length, c_in, channels)
        row, want = {}, None
        for name, fn in fns.items():
            try:
                compiled = jax.jit(fn).lower(params, x, cond).compile()
                got = np.asarray(compiled(params, x, cond))
                want = got if want is None else want
                row[f"{name}_max_abs_diff"] = float(np.max(np.abs(got - want)))
                ms = median_ms(lambda i, c=compiled, p=params, x=x, k=cond: c(p, x + i, k), runs)
                row[f"{name}_ms"] = round(ms, 4)
            except Exception as e:
                row[f"{name}_error"] = repr(e)[:2000]
        out[f"L{length}_cin{c_in}_c{channels}"] = row
        _progress(f"block_L{length}_cin{c_in}_c{channels}", row)
    return out


def main():
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dp", help=f"one of {sorted(sampler.MODELS)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--blocks", action="store_true", help="also time single blocks")
    args = parser.parse_args()
    if args.model not in sampler.MODELS:
        raise cli.UserError(f"--model: unknown {args.model!r}; known: {sorted(sampler.MODELS)}")
    tic = time.perf_counter()
    report = {**device_report(), "model": args.model, "batch": args.batch, "runs": args.runs}
    report["interpret_mode"] = fused_block.default_interpret()
    report.update(compare(args.model, args.batch, args.runs))
    if args.blocks:
        report["blocks"] = block_timings(args.runs)
    report["total_s"] = round(time.perf_counter() - tic, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)
