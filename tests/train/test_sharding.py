"""FSDP + data parallelism on 8 fake CPU devices: same training, really split parameters."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from action_gen import config_schema
from action_gen.train import sharding
from tests.train import scale_helpers

NUM_STEPS, BATCH = 5, 16


def _mesh(data, fsdp, devices=None):
    devices = jax.devices()[: data * fsdp] if devices is None else devices
    return Mesh(np.asarray(devices).reshape(data, fsdp), sharding.MESH_AXES)


@pytest.fixture(scope="module")
def runs():
    config = scale_helpers.make_config(num_steps=NUM_STEPS)
    batches = scale_helpers.synthetic_batches(config, NUM_STEPS, BATCH)
    single = scale_helpers.train(config, _mesh(1, 1), batches)
    sharded = scale_helpers.train(config, _mesh(2, 4), batches)
    return single, sharded


def test_fsdp_training_matches_single_device(runs):
    (initial, single), (initial_sharded, sharded) = runs
    jax.tree.map(np.testing.assert_array_equal, initial, initial_sharded)
    moved = max(
        float(np.max(np.abs(np.asarray(a) - b)))
        for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(initial), strict=True)
    )
    assert moved > 1e-3  # the comparison below is meaningful: training moved the weights
    for name in ("params", "ema_params", "opt_state"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6
            ),
            getattr(single, name),
            getattr(sharded, name),
        )
    assert int(sharded.step) == NUM_STEPS


def test_large_parameters_are_split_over_fsdp(runs):
    _, (_, sharded) = runs
    leaves = jax.tree_util.tree_flatten_with_path(sharded.params)[0]
    split = [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in leaves
        if leaf.size >= scale_helpers.FSDP_MIN_SIZE
    ]
    assert split, "the test model has no parameter above the FSDP threshold"
    for name, leaf in split:
        assert "fsdp" in leaf.sharding.spec, name
        dim = list(leaf.sharding.spec).index("fsdp")
        for shard in leaf.addressable_shards:
            assert shard.data.shape[dim] == leaf.shape[dim] // 4, name
    # Small leaves (biases, norms) stay whole on every device.
    small = [leaf for _, leaf in leaves if leaf.size < scale_helpers.FSDP_MIN_SIZE]
    assert all(leaf.sharding.is_fully_replicated for leaf in small)
    # Adam's moments follow their parameters.
    mu = sharded.opt_state[1][0].mu
    for p, m in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(mu), strict=True):
        assert p.sharding.spec == m.sharding.spec


def test_logical_rules_then_size_rule():
    mesh = _mesh(2, 4)
    # Named: the first dim whose rule maps to a mesh axis that divides it.
    assert sharding.leaf_spec((512, 1024), ("embed", "mlp"), mesh, fsdp_min_size=1) == (
        PartitionSpec("fsdp", None)
    )
    # conv taps map to None, 6 is not divisible by 4: "mlp" (1024) takes fsdp.
    spec = sharding.leaf_spec((5, 6, 1024), ("conv_kernel", "embed", "mlp"), mesh, fsdp_min_size=1)
    assert spec == PartitionSpec(None, None, "fsdp")
    # Un-named: the largest divisible dim by the size rule.
    assert sharding.leaf_spec((5, 64, 256), None, mesh, fsdp_min_size=1) == PartitionSpec(
        None, None, "fsdp"
    )
    # Below the threshold, or with the replicated rule set: whole.
    assert sharding.leaf_spec((64, 256), None, mesh, fsdp_min_size=10**6) == PartitionSpec(
        None, None
    )
    state = {"w": jax.ShapeDtypeStruct((64, 256), np.float32)}
    shardings = sharding.state_sharding(mesh, state, rules="replicated", fsdp_min_size=1)
    assert shardings["w"].is_fully_replicated
    with pytest.raises(ValueError, match="mesh.rules"):
        sharding.state_sharding(mesh, state, rules="nope")


def test_mesh_errors_name_the_config_keys():

    with pytest.raises(ValueError, match="mesh.data"):
        sharding.create_mesh(config_schema.section("mesh", data=3, fsdp=2))
