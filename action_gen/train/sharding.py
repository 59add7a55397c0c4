"""Device mesh, parameter sharding rules (logical axes + FSDP), and global batches.

The mesh has two axes, `data` and `fsdp`; the batch is split over both (every device sees
B / (data * fsdp) rows). Parameters are placed by two rules, applied per leaf:

1. Logical axes (MaxText-style): layers name their parameter axes
   (`nn.with_logical_partitioning`, e.g. a π0 MLP kernel is ("embed", "mlp")), and a rule
   set chosen by name (`config.mesh.rules`) maps each logical name to a mesh axis or to
   None. Dimension i gets the first candidate mesh axis that is still unused in this
   leaf's spec, has size > 1, and divides the dimension.
2. FSDP size rule: a leaf that rule 1 leaves fully replicated (un-named, or every name
   mapped to None) is split over `fsdp` along its largest dimension divisible by the fsdp
   size.

Both rules apply only to leaves with at least `fsdp_min_size` elements: gathering a small
bias costs more latency than the memory it would save. Optimizer-state leaves (Adam's mu,
nu, ...) mirror the parameter tree, so each one takes the sharding of the parameter whose
key path it ends with; counters and other scalars are replicated.

Setup (flax lm1b / big_vision): `jax.eval_shape(init)` gives the abstract state,
`state_sharding` its shardings, and `jax.jit(init, out_shardings=...)` materialises every
leaf directly in its shard, so no host ever holds the whole model.
"""

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

# Named rule sets: (logical axis, mesh axis or None) pairs, tried in order per dimension.
# "fsdp": every named model dimension may be split over fsdp (the first named dim of a
# leaf that fsdp divides wins); conv taps stay whole (kernel size 3-5, never divisible).
# "size_only": names are ignored; only the FSDP size rule places parameters.
# "replicated": no parameter is split (pure data parallelism even when mesh.fsdp > 1).
RULE_SETS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "fsdp": (
        ("embed", "fsdp"),
        ("mlp", "fsdp"),
        ("heads", "fsdp"),
        ("vocab", "fsdp"),
        ("conv_kernel", None),
    ),
    "size_only": (),
    "replicated": (),
}
DEFAULT_FSDP_MIN_SIZE = 2**16  # elements; 256 KiB in float32


def create_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all); -1 takes the remaining devices.

    Built as a plain `Mesh` (Auto axis types) so `jit` in/out shardings drive the
    partitioning; `jax.make_mesh` now defaults to Explicit axes, which we don't use.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    data, fsdp = int(config.data), int(config.fsdp)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data, mesh.fsdp may be -1")
    if data == -1:
        data = devices.size // fsdp
    if fsdp == -1:
        fsdp = devices.size // data
    if data * fsdp != devices.size:
        raise ValueError(
            f"mesh: mesh.data={data} x mesh.fsdp={fsdp} does not match {devices.size} devices"
        )
    return Mesh(devices.reshape(data, fsdp), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def get_rules(name: str) -> tuple[tuple[str, str | None], ...]:
    """The rule set called `name` (config key `mesh.rules`)."""
    if name not in RULE_SETS:
        raise ValueError(f"mesh.rules: unknown rule set {name!r}; known: {sorted(RULE_SETS)}")
    return RULE_SETS[name]


def leaf_spec(
    shape: Sequence[int],
    names: Sequence[str | None] | None,
    mesh: Mesh,
    *,
    rules: Sequence[tuple[str, str | None]] = RULE_SETS["fsdp"],
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE,
    use_size_rule: bool = True,
) -> PartitionSpec:
    """The PartitionSpec of one array of `shape` whose axes are called `names`.

    Args:
      shape: the array's shape.
      names: one logical name (or None) per dimension, or None when the leaf has none.
      rules: (logical, mesh axis) pairs; see the module docstring.
      fsdp_min_size: leaves with fewer elements are replicated.
      use_size_rule: split an otherwise replicated leaf over fsdp by size.
    Returns:
      A PartitionSpec with one entry per dimension (None = not split).
    """
    shape = tuple(int(d) for d in shape)
    spec: list[str | None] = [None] * len(shape)
    if int(np.prod(shape, dtype=np.int64)) < fsdp_min_size or not shape:
        return PartitionSpec(*spec)
    if names is not None and len(names) == len(shape):
        for i, name in enumerate(names):
            for logical, axis in rules:
                if logical != name or axis is None or axis in spec:
                    continue
                if mesh.shape[axis] > 1 and shape[i] % mesh.shape[axis] == 0:
                    spec[i] = axis
                    break
    fsdp = mesh.shape.get("fsdp", 1)
    if use_size_rule and fsdp > 1 and not any(spec):
        divisible = [i for i, d in enumerate(shape) if d % fsdp == 0]
        if divisible:
            # Largest dimension: the smallest shards of the gathered dimension are the
            # most even, and the ties go to the first (output dims come last in kernels).
            spec[max(divisible, key=lambda i: shape[i])] = "fsdp"
    return PartitionSpec(*spec)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def _names_by_path(logical_axes) -> dict[tuple, tuple]:
    """{param key path: logical names} from a PartitionSpec pytree over the params."""
    if logical_axes is None:
        return {}
    flat, _ = jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=_is_spec)
    return {tuple(path): tuple(spec) for path, spec in flat if _is_spec(spec)}


def state_sharding(
    mesh: Mesh,
    abstract_state,
    logical_axes=None,
    *,
    rules: str = "fsdp",
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE,
):
    """NamedSharding for every leaf of `abstract_state` (a TrainState, or any pytree).

    Args:
      mesh: the (data, fsdp) mesh.
      abstract_state: pytree of arrays or `jax.ShapeDtypeStruct`s.
      logical_axes: the model's parameter axis names, a PartitionSpec pytree with the
        structure of `params` (`models.param_logical_axes`); None: size rule only. A state
        leaf whose key path ends with a parameter's key path and has its rank takes that
        parameter's names, so `params`, `ema_params` and Adam's `mu`/`nu` shard alike.
      rules: the rule-set name (`RULE_SETS`).
      fsdp_min_size: leaves with fewer elements are replicated.
    Returns:
      A pytree of NamedSharding with the structure of `abstract_state`.
    """
    rule_pairs = get_rules(rules)
    use_size_rule = rules != "replicated"
    names_by_path = _names_by_path(logical_axes)
    lengths = sorted({len(p) for p in names_by_path}, reverse=True)

    def one(path, leaf):
        path = tuple(path)
        names = None
        for n in lengths:
            candidate = names_by_path.get(path[-n:]) if len(path) >= n else None
            if candidate is not None and len(candidate) == len(leaf.shape):
                names = candidate
                break
        spec = leaf_spec(
            leaf.shape,
            names,
            mesh,
            rules=rule_pairs,
            fsdp_min_size=fsdp_min_size,
            use_size_rule=use_size_rule,
        )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def state_sharding_from_config(mesh_config, mesh: Mesh, abstract_state, logical_axes=None):
    """`state_sharding` with the rule set and size threshold of `config.mesh`."""
    return state_sharding(
        mesh,
        abstract_state,
        logical_axes,
        rules=mesh_config.rules,
        fsdp_min_size=int(mesh_config.fsdp_min_size),
    )


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Numpy batch of this process → global jax arrays laid out on the mesh.

    Each process passes only its own rows (B / num_processes); the global array is their
    concatenation in process order. Non-numeric leaves (e.g. byte-string prompts) stay on
    the host.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
