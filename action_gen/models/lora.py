"""Fine-tuning layouts of a model's parameters: LoRA adapters and frozen leaves, as pure
functions over the parameter tree, around any model's apply function (no model changes).

A layout (`FinetuneLayout.from_config(config)`, fields `config.lora.{rank, alpha, targets}`
and `config.optimizer.{trainable, frozen_dtype}`) turns the model's parameters into the
*train parameters* a TrainState holds, and back:

  no LoRA:  the model's own tree (frozen leaves optionally held in `frozen_dtype`);
  LoRA:     {"base": the model's tree, "lora": {<path of each adapted kernel>: {"a", "b"}}}

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): each kernel
whose '/'-joined path matches the regex `lora.targets` is replaced, functionally, by

  W_eff = W + (alpha / r) · A · B,     W [..., I, O],  A [..., I, r],  B [..., r, O]

with A ~ N(0, 1 / I) and B = 0, so at step 0 W_eff == W exactly (the base model; openpi
draws both factors from N(0, 0.01), so its step 0 is a slightly perturbed base). The last
two axes of a kernel are its (input, output) axes and any leading axes are batch axes (one
adapter per slice): a Dense kernel [I, O]; a scanned layer stack [L, I, O] (one adapter per
layer); openpi's einsum kernels, e.g. q [N, D, H] (per head, D → H), attn_vec [N, H, D],
gating [2, D, F] — the convention of openpi's own LoRA (`openpi/models/lora.py`, axes
(-2, -1)), so the adapters of an openpi-layout π0 are shaped as openpi's. A kernel whose
input spans several axes (DenseGeneral [D, N, H]) is thus adapted per slice of its leading
axes; target such kernels only in a reshaped [I, O] layout if a single adapter is wanted.
Leaves of rank < 2 (biases, norm scales) are never adapted, whatever the pattern.

`wrap_apply_fn` merges the adapters into the kernels inside the apply function, once per
`prepare` (the merged parameters travel in the context, so a sampler's steps reuse them)
and the gradient reaches A and B through the merge. Cost of the functional form: the
backward pass forms dL/dW_eff at each adapted kernel's full size (transient, no optimizer
state); the model code stays untouched. Measured at π0 size (H200, batch 8, bf16 compute):
peak 53 GB without the model's per-layer remat, 17 GB with `model.remat="full"`.

Trainable leaves (`trainable_mask`): the LoRA factors always; a base leaf iff its model path
matches the regex `optimizer.trainable` (re.search over 'a/b/c'). Unset, it means every
base leaf without LoRA (ordinary training) and none with LoRA. Frozen leaves get no
optimizer state, no gradient and no EMA copy (the EMA holds `trainable_subset(params)`),
and may be held in `optimizer.frozen_dtype` (e.g. bfloat16: half the memory of the base).

Serving (`merge`, `restore_model_params`): a checkpoint always stores the train parameters
(unmerged, so a run resumes exactly); whoever reads it for serving — `Policy.from_checkpoint`,
and a fine-tuning run starting from it (`train.init_from`) — merges at restore: EMA of the
trainable leaves, raw values of the frozen ones, adapters folded into their kernels in
float32. The merged tree has the model's own structure, so the served model is the base
architecture at no extra cost per chunk.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from action_gen import models

BASE, LORA = "base", "lora"
LORA_A, LORA_B = "a", "b"
SEP = "/"


def path_str(path: tuple) -> str:
    """('backbone_0', 'q', 'kernel') -> 'backbone_0/q/kernel'."""
    return SEP.join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class FinetuneLayout:
    """Which leaves carry LoRA adapters, which train, and the dtype of frozen ones.

    Attributes:
      rank: r of every adapter; 0 disables LoRA.
      alpha: the adapters' scale is alpha / rank.
      targets: regex over model parameter paths of the kernels to adapt (re.search).
      trainable: regex over model parameter paths of the base leaves that train; None: all
        of them without LoRA, none with LoRA.
      frozen_dtype: dtype frozen base leaves are held in (None: as initialised, float32).
    """

    rank: int = 0
    alpha: float = 1.0
    targets: str = ""
    trainable: str | None = None
    frozen_dtype: str | None = None

    @classmethod
    def from_config(cls, config) -> "FinetuneLayout":
        """From a run config (ConfigDict or its JSON dict): `lora.{rank, alpha, targets}`,
        `optimizer.{trainable, frozen_dtype}`; absent sections mean ordinary training."""
        lora = _section(config, "lora")
        optimizer = _section(config, "optimizer")
        rank = int(lora["rank"] or 0)
        if rank < 0:
            raise ValueError(f"lora.rank must be >= 0, got {rank}")
        targets = lora["targets"] or ""
        if rank and not targets:
            raise ValueError("lora.rank > 0 needs lora.targets (a regex over parameter paths)")
        layout = cls(
            rank=rank,
            alpha=float(lora["alpha"] or rank or 1.0),
            targets=targets,
            trainable=optimizer["trainable"] or None,
            frozen_dtype=optimizer["frozen_dtype"] or None,
        )
        for name in ("targets", "trainable"):
            pattern = getattr(layout, name)
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as e:
                    section = "lora" if name == "targets" else "optimizer"
                    raise ValueError(f"{section}.{name}: invalid regex {pattern!r}: {e}") from e
        return layout

    @property
    def uses_lora(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        """alpha / r, the factor of A · B."""
        return self.alpha / self.rank

    @property
    def is_identity(self) -> bool:
        """Ordinary training: the train parameters are the model's, all trainable."""
        return not self.uses_lora and self.trainable is None and self.frozen_dtype is None

    def base_trainable(self, path: str) -> bool:
        """Whether the base leaf at model path `path` trains."""
        if self.trainable is None:
            return not self.uses_lora
        return re.search(self.trainable, path) is not None


def _section(config, name: str) -> Mapping:
    return config[name]  # a ConfigDict or a stored config's (completed) JSON dict


def lora_targets(model_params: Any, layout: FinetuneLayout) -> dict[tuple, tuple]:
    """{path: kernel shape} of the kernels `layout.targets` adapts (rank >= 2 leaves).

    Raises:
      ValueError: the pattern matches no kernel (the message lists some kernel paths).
    """
    flat = traverse_util.flatten_dict(model_params)
    found = {
        path: tuple(leaf.shape)
        for path, leaf in flat.items()
        if len(leaf.shape) >= 2 and re.search(layout.targets, path_str(path))
    }
    if not found:
        kernels = [path_str(p) for p, leaf in flat.items() if len(leaf.shape) >= 2]
        raise ValueError(
            f"lora.targets={layout.targets!r} matches no kernel (rank >= 2 parameter); "
            f"kernels are e.g. {kernels[:8]}"
        )
    return found


def init_lora(key: jax.Array, model_params: Any, layout: FinetuneLayout) -> dict:
    """The adapters of every targeted kernel: A ~ N(0, 1 / I) [..., I, r], B = 0 [..., r, O],
    float32, nested like the kernels' paths."""
    targets = lora_targets(model_params, layout)
    flat = {}
    for i, (path, shape) in enumerate(sorted(targets.items())):
        *batch, fan_in, fan_out = shape
        a = jax.random.normal(jax.random.fold_in(key, i), (*batch, fan_in, layout.rank))
        flat[(*path, LORA_A)] = a / jnp.sqrt(jnp.float32(fan_in))
        flat[(*path, LORA_B)] = jnp.zeros((*batch, layout.rank, fan_out), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def init_train_params(model_params: Any, layout: FinetuneLayout, key: jax.Array) -> Any:
    """The train parameters of `layout` from the model's (initial or pretrained) ones."""
    if layout.is_identity:
        return model_params
    base = _cast_frozen(model_params, layout)
    if not layout.uses_lora:
        return base
    return {BASE: base, LORA: init_lora(key, model_params, layout)}


def _cast_frozen(model_params: Any, layout: FinetuneLayout) -> Any:
    if layout.frozen_dtype is None:
        return model_params
    dtype = jnp.dtype(layout.frozen_dtype)
    flat = traverse_util.flatten_dict(model_params)
    return traverse_util.unflatten_dict(
        {
            path: leaf
            if layout.base_trainable(path_str(path)) or not jnp.issubdtype(leaf.dtype, jnp.floating)
            else leaf.astype(dtype)
            for path, leaf in flat.items()
        }
    )


def trainable_mask(train_params: Any, layout: FinetuneLayout) -> Any:
    """A tree of Python bools with the structure of `train_params`: True where a leaf trains.
    Works on abstract trees (`jax.eval_shape`): it reads paths only."""
    flat = traverse_util.flatten_dict(train_params)
    if not layout.uses_lora:
        mask = {p: layout.base_trainable(path_str(p)) for p in flat}
    else:
        mask = {
            p: p[0] == LORA or layout.base_trainable(path_str(p[1:]))
            for p in flat  # p[0] is BASE or LORA
        }
    if not any(mask.values()):
        raise ValueError(
            f"no parameter is trainable: optimizer.trainable={layout.trainable!r} matches "
            "no parameter path and there are no LoRA adapters"
        )
    return traverse_util.unflatten_dict(mask)


def split_trainable(params: Any, mask: Any) -> tuple[dict, dict]:
    """(trainable, frozen): two nested dicts holding the leaves where `mask` is True / False
    (each omits the other's leaves); `combine` inverts it."""
    flat = traverse_util.flatten_dict(params)
    flat_mask = traverse_util.flatten_dict(mask)
    trainable = {p: v for p, v in flat.items() if flat_mask[p]}
    frozen = {p: v for p, v in flat.items() if not flat_mask[p]}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def trainable_subset(params: Any, mask: Any) -> dict:
    """The trainable leaves of `params` (the tree an EMA or a gradient covers)."""
    return split_trainable(params, mask)[0]


def combine(*trees: dict) -> dict:
    """The union of nested dicts with disjoint leaves (inverse of `split_trainable`)."""
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(tree))
    return traverse_util.unflatten_dict(flat)


def merged_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """W + scale · A · B over the last two axes, leading axes batched; computed in float32
    and returned in the promoted dtype of (W, A, B).

    Args:
      kernel: W [..., I, O]; a: A [..., I, r]; b: B [..., r, O].
    Returns:
      [..., I, O].
    """
    dtype = jnp.result_type(kernel, a, b)
    delta = jnp.einsum("...ir,...ro->...io", a, b, preferred_element_type=jnp.float32)
    return (kernel.astype(jnp.float32) + scale * delta).astype(dtype)


def merge(train_params: Any, layout: FinetuneLayout) -> Any:
    """The model's parameters from train parameters: adapters folded into their kernels
    (`merged_kernel`); frozen leaves as held. Without LoRA the tree is returned as is."""
    if not layout.uses_lora:
        return train_params
    base = traverse_util.flatten_dict(train_params[BASE])
    adapters = traverse_util.flatten_dict(train_params[LORA])
    out = dict(base)
    for path in {p[:-1] for p in adapters}:
        if path not in base:
            raise ValueError(f"LoRA adapter for {path_str(path)!r} has no base kernel")
        a, b = adapters[(*path, LORA_A)], adapters[(*path, LORA_B)]
        out[path] = merged_kernel(base[path], a, b, layout.scale)
    return traverse_util.unflatten_dict(out)


@dataclasses.dataclass(frozen=True)
class _MergedContext:
    """Registered below as a pytree: the merged parameters and the inner context."""

    params: Any
    context: Any


jax.tree_util.register_dataclass(_MergedContext, data_fields=["params", "context"], meta_fields=[])


def wrap_apply_fn(apply_fn: Callable, layout: FinetuneLayout) -> Callable:
    """`apply_fn` over the model's parameters → the same function over `layout`'s train
    parameters (identity without LoRA: frozen leaves need no wrapping).

    A `models.ContextApply` stays one: `prepare(p, obs)` merges once and returns the merged
    parameters with the inner context; `apply(p, context, x, t)` uses those, so a sampler's
    steps do not re-merge. Its `__call__` (the loss path) differentiates through the merge.
    """
    if not layout.uses_lora:
        return apply_fn
    if isinstance(apply_fn, models.ContextApply):
        inner = apply_fn

        def prepare(params, obs):
            merged = merge(params, layout)
            return _MergedContext(merged, inner.prepare(merged, obs))

        def apply(params, context, noisy_actions, time):
            return inner.apply(context.params, context.context, noisy_actions, time)

        return models.ContextApply(prepare=prepare, apply=apply)

    def merged_apply(params, obs, noisy_actions, time):
        return apply_fn(merge(params, layout), obs, noisy_actions, time)

    return merged_apply


def restore_model_params(
    restore: Callable[[Any, bool], Any],
    layout: FinetuneLayout,
    abstract_model_params: Any,
    *,
    use_ema: bool = True,
) -> Any:
    """The model's parameters (adapters merged) from a checkpoint written under `layout`.

    Args:
      restore: `restore(abstract_tree, use_ema) -> tree` reads `state.ema_params` (or
        `state.params`) shaped as `abstract_tree` (e.g. `checkpoint.restore_params`, which
        restores a sub-tree); it attaches shardings itself.
      layout: the layout the checkpoint was trained under (from its stored config).
      abstract_model_params: the model's parameter shapes (`jax.eval_shape` of the init).
      use_ema: EMA values of the trainable leaves (frozen leaves have no EMA: their raw
        values are the only ones), else the raw parameters.
    Returns:
      The model's parameter tree, float32 where adapters were merged.
    """
    if layout.is_identity:
        return restore(abstract_model_params, use_ema)
    abstract_train = jax.eval_shape(
        lambda p: init_train_params(p, layout, jax.random.key(0)), abstract_model_params
    )
    mask = trainable_mask(abstract_train, layout)
    trainable, frozen = split_trainable(abstract_train, mask)
    values = restore(trainable, use_ema)
    if frozen:
        values = combine(values, restore(frozen, False))
    return merge(values, layout)
