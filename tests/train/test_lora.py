"""LoRA and frozen-leaf fine-tuning (models/lora.py, train/lora.py): the merge math on
stacked kernels, step 0 equal to the base, optimizer state only for trainable leaves
(counted), frozen leaves untouched by training, sharding of the adapters, and a LoRA
checkpoint served merged by `Policy.from_checkpoint` with the same chunks as the unmerged
LoRA apply. All on the `tiny` π0 of `configs/flow_pi0_obstacle.py:smoke`."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from action_gen import checkpoint, compat, models
from action_gen.data import schema, spec
from action_gen.models import lora
from action_gen.sample.policy import Policy
from action_gen.train import lora as train_lora
from action_gen.train import sharding
from action_gen.train.program import build_train_program
from configs import flow_pi0_obstacle
from tests.serve import tiny_policy

STATE_DIM, ACTION_DIM, BATCH = 2, 2, 4
HEADS = ("state_proj", "action_in_proj", "time_mlp_in", "time_mlp_out", "action_out")


def _config(variant: str = ""):
    config = flow_pi0_obstacle.get_config(",".join(x for x in ("smoke", variant) if x))
    if "lora" in variant:
        config.lora.rank = 4  # smaller than the config's 16
    return config


def _setup(config):
    example = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))
    shape = (config.data.action_horizon, config.model.action_dim)
    return example, shape


def _program(config, mesh=None):
    mesh = mesh or sharding.create_mesh(config.mesh, jax.devices()[:1])
    example, shape = _setup(config)
    return build_train_program(config, mesh, example, shape)


def _batch(config, seed=0):
    example, (horizon, dim) = _setup(config)
    rng = np.random.default_rng(seed)
    batch = {k: np.repeat(np.asarray(v), BATCH, axis=0) for k, v in example.items()}
    batch[schema.OBS_STATE] = rng.normal(size=batch[schema.OBS_STATE].shape).astype(np.float32)
    batch[schema.PROMPT_TOKENS] = rng.integers(1, 250, batch[schema.PROMPT_TOKENS].shape)
    batch[schema.PROMPT_MASK] = np.ones(batch[schema.PROMPT_TOKENS].shape, bool)
    batch[schema.ACTIONS] = rng.uniform(-1, 1, (BATCH, horizon, dim)).astype(np.float32)
    batch[schema.ACTION_PAD_MASK] = np.ones((BATCH, horizon), bool)
    batch[schema.ACTION_DIM_MASK] = np.arange(dim)[None].repeat(BATCH, 0) < ACTION_DIM
    return jax.tree.map(jnp.asarray, batch)


def test_merged_kernel_on_stacked_kernels_matches_numpy():
    """W [..., I, O] + s A [..., I, r] B [..., r, O]: leading axes are batch (scanned
    layers, einsum heads), the last two are (in, out)."""
    rng = np.random.default_rng(0)
    for shape in ((6, 5), (3, 6, 5), (2, 3, 6, 5)):
        *lead, fan_in, fan_out = shape
        w = rng.normal(size=shape).astype(np.float32)
        a = rng.normal(size=(*lead, fan_in, 2)).astype(np.float32)
        b = rng.normal(size=(*lead, 2, fan_out)).astype(np.float32)
        want = w + 0.5 * np.matmul(a, b)
        got = jax.jit(functools.partial(lora.merged_kernel, scale=0.5))(w, a, b)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # bf16 frozen base, float32 adapters: merged in float32.
    got = lora.merged_kernel(jnp.ones((4, 3), jnp.bfloat16), jnp.ones((4, 1)), jnp.ones((1, 3)), 1)
    assert got.dtype == jnp.float32 and np.all(np.asarray(got) == 2.0)


def test_lora_layout_starts_at_the_base_and_names_bad_patterns():
    config = _config("lora")
    layout = lora.FinetuneLayout.from_config(config)
    model = models.create_model(config.model)
    example, shape = _setup(config)
    params = models.init_params(model, jax.random.key(0), example, shape)
    train = lora.init_train_params(params, layout, jax.random.key(1))
    targets = lora.lora_targets(params, layout)
    adapted = {(stack, path[-2]) for path in targets for stack in ("backbone", "expert")
               if stack in lora.path_str(path)}  # fmt: skip
    assert adapted == {(s, m) for s in ("backbone", "expert")
                       for m in ("q", "kv", "out", "gate_up", "down")}  # fmt: skip
    flat = traverse_util.flatten_dict(train[lora.LORA])
    for path, kernel_shape in targets.items():  # per-layer [I, O] or scanned [L, I, O]
        assert flat[(*path, "a")].shape == (*kernel_shape[:-1], 4)
        assert flat[(*path, "b")].shape == (*kernel_shape[:-2], 4, kernel_shape[-1])
        assert not np.any(np.asarray(flat[(*path, "b")]))
    # B = 0: the merged tree IS the base model, bit for bit.
    for got, want in zip(
        jax.tree.leaves(lora.merge(train, layout)), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    bad = lora.FinetuneLayout(rank=2, targets="attention/query")
    with pytest.raises(ValueError, match="attention/query.*matches no kernel"):
        lora.init_train_params(params, bad, jax.random.key(0))
    with pytest.raises(ValueError, match="optimizer.trainable"):
        lora.trainable_mask(params, lora.FinetuneLayout(trainable="^nothing$"))


def test_only_trainable_leaves_carry_optimizer_state():
    """Counted on the abstract states of the real train program (no allocation)."""
    figures = {}
    for variant in ("", "lora", "frozen_backbone"):
        program = _program(_config(variant))
        figures[variant] = train_lora.footprint(program.abstract_state, program.trainable)
        opt_leaves = [x for x in jax.tree.leaves(program.abstract_state.opt_state) if x.ndim]
        trainable_bytes = sum(
            x.size * x.dtype.itemsize
            for x in jax.tree.leaves(
                program.abstract_state.params
                if program.trainable is None
                else lora.trainable_subset(program.abstract_state.params, program.trainable)
            )
        )
        # Adam: mu and nu per trainable leaf, nothing for frozen ones (scalars aside).
        assert sum(x.size * x.dtype.itemsize for x in opt_leaves) == 2 * trainable_bytes
        assert figures[variant]["ema_bytes"] == trainable_bytes
    full, lo, frozen = figures[""], figures["lora"], figures["frozen_backbone"]
    assert full["trainable_params"] == full["params"]
    assert frozen["trainable_params"] < full["trainable_params"]
    # LoRA trains r (I + O) per adapted [..., I, O] slice plus the expert's projections.
    params = _program(_config()).abstract_state.params
    heads = sum(x.size for k, v in params.items() if k in HEADS for x in jax.tree.leaves(v))
    kernels = lora.lora_targets(params, lora.FinetuneLayout.from_config(_config("lora")))
    adapters = sum(4 * np.prod(s[:-2], dtype=int) * (s[-2] + s[-1]) for s in kernels.values())
    assert lo["trainable_params"] == adapters + heads
    assert lo["params"] == full["params"] + adapters


@pytest.fixture(scope="module")
def trained():
    """(config, program, initial state, state after 2 LoRA steps) on one device."""
    config = _config("lora")
    config.optimizer.warmup_steps = 0
    program = _program(config)
    initial = jax.device_get(program.init_fn(jax.random.key(0)))
    state = jax.device_put(initial)
    batch = _batch(config)
    for _ in range(2):
        state, metrics = program.step_fn(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    return config, program, initial, jax.device_get(state)


def test_lora_step_trains_adapters_and_heads_only_and_shards_them(trained):
    config, program, initial, state = trained
    before = initial.params
    after = traverse_util.flatten_dict(jax.device_get(state.params))
    mask = traverse_util.flatten_dict(program.trainable)
    for path, old in traverse_util.flatten_dict(before).items():
        moved = not np.array_equal(old, after[path])
        if not mask[path]:
            assert not moved, path  # frozen: bit-identical
        elif path[-1] == "b" or path[1] == "action_out":
            assert moved, path
    # The EMA holds the trainable subset only.
    ema_paths = set(traverse_util.flatten_dict(jax.device_get(state.ema_params)))
    assert ema_paths == {p for p, m in mask.items() if m}
    # Adapters on an 8-device FSDP mesh: named like their kernels' axes (no error, and a
    # large enough A is split along its kernel's input axis).
    config = copy.deepcopy(config)
    config.mesh.fsdp, config.mesh.data, config.mesh.fsdp_min_size = 8, 1, 64
    sharded = _program(config, sharding.create_mesh(config.mesh))
    specs = traverse_util.flatten_dict(sharded.state_shardings.params[lora.LORA])
    gate_up_a = ("gate_up", "kernel", "a")
    path = next(p for p in specs if "backbone" in lora.path_str(p) and p[-3:] == gate_up_a)
    assert tuple(specs[path].spec)[-2:] == ("fsdp", None)


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory, trained):
    """A trained LoRA state with non-zero adapters (its EMA perturbed, so EMA and raw
    values differ everywhere), written in the real checkpoint format."""
    config, program, _, state = trained
    rng = np.random.default_rng(1)
    noisy = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(x.dtype),
                         state.ema_params)  # fmt: skip
    state = jax.device_put(state.replace(ema_params=noisy))
    workdir = tmp_path_factory.mktemp("lora")
    manager = checkpoint.create_checkpoint_manager(str(workdir / "checkpoints"), async_save=False)
    checkpoint.save_checkpoint(
        manager,
        1,
        state,
        config=compat.config_to_json_dict(config),
        norm_stats=tiny_policy.norm_stats(STATE_DIM, ACTION_DIM),
        data_state={"batches_consumed": 1},
    )
    manager.wait_until_finished()
    return str(workdir), config, program, jax.device_get(state)


def test_policy_serves_the_merged_lora_model(lora_checkpoint):
    workdir, config, program, state = lora_checkpoint
    layout = program.layout
    policy = Policy.from_checkpoint(workdir)
    # EMA of the trainable leaves, raw frozen leaves, adapters merged: the model's tree.
    served = lora.combine(lora.trainable_subset(state.ema_params, program.trainable),
                          lora.split_trainable(state.params, program.trainable)[1])  # fmt: skip
    merged = lora.merge(served, layout)
    assert jax.tree.structure(policy.params) == jax.tree.structure(merged)
    for got, want in zip(jax.tree.leaves(policy.params), jax.tree.leaves(merged), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # Sampling the merged parameters equals sampling the unmerged train parameters through
    # the LoRA-wrapped apply, from the same noise.
    obs, _ = _setup(config)
    obs = {k: jnp.repeat(v, 2, axis=0) for k, v in obs.items()}
    obs[schema.PROMPT_TOKENS] = jnp.full(obs[schema.PROMPT_TOKENS].shape, 65)
    base_apply = models.make_apply_fn(models.create_model(config.model))
    lora_apply = lora.wrap_apply_fn(base_apply, layout)

    @functools.partial(jax.jit, static_argnums=0)
    def chunk(apply_fn, params):
        return policy.objective.sample(apply_fn, params, obs, jax.random.key(3), 2)

    np.testing.assert_allclose(
        chunk(base_apply, policy.params), chunk(lora_apply, served), rtol=1e-4, atol=1e-5
    )


def test_init_from_a_lora_checkpoint_and_bf16_serving(lora_checkpoint):
    """A fine-tuning run starts from any checkpoint's merged model (train.init_from), and a
    Policy casts its parameters to the compute dtype once."""
    workdir, config, program, _ = lora_checkpoint
    full = _program(_config())
    pretrained = train_lora.restore_pretrained_params(
        workdir, _config(), full.abstract_model_params
    )
    policy = Policy.from_checkpoint(workdir, param_dtype="float32")
    for got, want in zip(jax.tree.leaves(pretrained), jax.tree.leaves(policy.params), strict=True):
        np.testing.assert_array_equal(got, want)
    state = full.init_from_fn(pretrained, jax.random.key(0))
    np.testing.assert_array_equal(
        state.params["action_out"]["kernel"], pretrained["action_out"]["kernel"]
    )
    other = _config()
    other.model.time_scale = 10.0
    with pytest.raises(ValueError, match="model.time_scale"):
        train_lora.restore_pretrained_params(workdir, other, full.abstract_model_params)
    bf16 = Policy(policy.config, policy.params, policy.norm_stats, param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}
