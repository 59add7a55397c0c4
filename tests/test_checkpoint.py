"""Checkpoints survive kills: keep-last-K deletion never removes files from a visible step,
and a damaged step is moved aside at manager start, so restore (and a training resume)
falls back to the newest readable step."""

import glob
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from action_gen import checkpoint, compat


def _state(step: int) -> dict:
    return {"step": jnp.asarray(step, jnp.int32), "params": {"w": jnp.full((3, 4), float(step))}}


def _write(directory, steps, *, max_to_keep=None) -> None:
    manager = checkpoint.create_checkpoint_manager(
        str(directory), max_to_keep=max_to_keep, async_save=True
    )
    for step in steps:
        checkpoint.save_checkpoint(
            manager,
            step,
            _state(step),
            config={"seed": 0},
            norm_stats={"mean": [0.0]},
            data_state={"batches_consumed": step},
        )
    manager.close()


def _abstract() -> dict:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(0)
    )


def _remove(path: str) -> None:
    for match in glob.glob(path):
        shutil.rmtree(match) if os.path.isdir(match) else os.remove(match)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 2, 0))


# What a kill during an in-place `rmtree` of a step (orbax's keep-last-K deletion before
# the fix) or during a hand-made copy can leave behind.
DAMAGE = {
    "no_sharding_file": lambda step_dir: _remove(f"{step_dir}/state/_sharding"),
    "no_tree_metadata": lambda step_dir: _remove(f"{step_dir}/state/_METADATA"),
    "no_ocdbt_manifest": lambda step_dir: _remove(f"{step_dir}/state/manifest.ocdbt"),
    "no_ocdbt_data": lambda step_dir: _remove(f"{step_dir}/state/d/*"),
    "truncated_ocdbt_manifest": lambda step_dir: _truncate(f"{step_dir}/state/manifest.ocdbt"),
    "no_state": lambda step_dir: _remove(f"{step_dir}/state"),
    "no_config": lambda step_dir: _remove(f"{step_dir}/config/metadata"),
    "no_data_position": lambda step_dir: _remove(f"{step_dir}/data"),
    "empty_step": lambda step_dir: [_remove(f"{step_dir}/*"), None][1],
}


@pytest.mark.parametrize("read_only", [False, True], ids=["train", "restore"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_step_is_moved_aside_and_restore_falls_back(tmp_path, caplog, damage, read_only):
    ckpt_dir = tmp_path / "checkpoints"
    _write(ckpt_dir, [1, 2, 3])
    DAMAGE[damage](str(ckpt_dir / "3"))

    with caplog.at_level(logging.WARNING):
        manager = checkpoint.create_checkpoint_manager(str(ckpt_dir), read_only=read_only)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("damaged checkpoint step 3 moved aside" in w for w in warnings), warnings
    assert manager.all_steps() == [1, 2] and manager.latest_step() == 2
    assert not (ckpt_dir / "3").exists()
    (moved,) = os.listdir(ckpt_dir / checkpoint.DAMAGED_DIR)
    assert moved.startswith("3-") and str(moved) in " ".join(warnings)

    state, config, norm_stats, data = checkpoint.restore_checkpoint(manager, _abstract())
    assert int(state["step"]) == 2 == data["batches_consumed"]
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 4), 2.0))
    assert config == {"seed": 0} and norm_stats == {"mean": [0.0]}
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = checkpoint.restore_params(
        manager,
        {"w": jax.ShapeDtypeStruct((3, 4), jnp.float32, sharding=sharding)},
        use_ema=False,
    )
    np.testing.assert_array_equal(params["w"], np.full((3, 4), 2.0))
    manager.close()


def test_readable_steps_and_unfinished_writes_are_not_touched(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    _write(ckpt_dir, [1, 2])
    # A write killed before its final rename: not a step; a writable manager removes it.
    shutil.copytree(ckpt_dir / "2", ckpt_dir / "3.orbax-checkpoint-tmp-123")
    _remove(f"{ckpt_dir}/3.orbax-checkpoint-tmp-123/state/_sharding")

    with caplog.at_level(logging.WARNING):
        manager = checkpoint.create_checkpoint_manager(str(ckpt_dir), read_only=True)
    assert manager.all_steps() == [1, 2]
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]
    assert (ckpt_dir / "3.orbax-checkpoint-tmp-123").exists()  # read-only: left alone

    # A resumed run removes it (before its first save) and writes step 3 again.
    _write(ckpt_dir, [3])
    assert sorted(os.listdir(ckpt_dir)) == ["1", "2", "3"]


def test_keep_last_k_never_deletes_inside_a_visible_step(tmp_path, monkeypatch):
    """The root cause: orbax's keep-last-K `rmtree`d the oldest step in place, so a kill
    midway left a step directory with files missing. Now the step is first renamed out of
    view (one atomic rename), and only then are its files deleted."""
    ckpt_dir = tmp_path / "checkpoints"
    deleted = []
    real_rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):
        deleted.append(os.path.relpath(str(path), ckpt_dir))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", recording_rmtree)
    _write(ckpt_dir, [1, 2, 3, 4, 5], max_to_keep=2)

    assert sorted(os.listdir(ckpt_dir)) == ["4", "5", checkpoint.TODELETE_DIR]
    assert os.listdir(ckpt_dir / checkpoint.TODELETE_DIR) == []  # emptied once safe
    assert sorted(deleted) == [f"{checkpoint.TODELETE_DIR}/{s}" for s in (1, 2, 3)], deleted


@pytest.mark.slow
def test_training_resume_falls_back_to_the_newest_readable_step(tmp_path, caplog):
    """The loop's resume goes through `create_checkpoint_manager`: a run whose latest step
    is damaged resumes from the step before (restoring it exactly)."""
    from action_gen.envs import collect  # noqa: PLC0415 - only this test needs the trainer
    from action_gen.train import loop  # noqa: PLC0415
    from configs import diffusion_unet_obstacle  # noqa: PLC0415

    config = diffusion_unet_obstacle.get_config("runlocal")
    config.data.dataset_dir = str(tmp_path / "dataset")
    config.train.num_steps = 2
    config.train.checkpoint_every = 1
    workdir = str(tmp_path / "run")
    collect.collect_builtin_datasets(config.data, workdir)  # the data step
    loop.train(config, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert [s for s, _ in checkpoint._step_dirs(ckpt_dir)] == [1, 2]
    step1 = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt_dir, "1", "state"))["params"]
    DAMAGE["no_sharding_file"](os.path.join(ckpt_dir, "2"))

    # Stopping at the step it resumes from: no training step runs (nothing to compile).
    with caplog.at_level(logging.INFO):
        resumed = jax.device_get(loop.train(config, workdir, stop_at_step=1))
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "damaged checkpoint step 2 moved aside" in messages
    assert re.search(r"Resumed from \S+ at step 1$", messages, re.MULTILINE), messages
    assert int(resumed.step) == 1
    for a, b in zip(jax.tree.leaves(step1), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_state_of_host_arrays_saves_as_a_readable_step(tmp_path):
    """numpy leaves are saved as jax arrays (with sharding metadata), so a step written
    from host arrays is complete, not moved aside as damaged at the next start."""
    manager = checkpoint.create_checkpoint_manager(str(tmp_path), async_save=False)
    state = {"step": np.int32(1), "params": {"w": np.ones((2, 3), np.float32)}}
    checkpoint.save_checkpoint(
        manager, 1, state, config={}, norm_stats={}, data_state={"batches_consumed": 1}
    )
    manager.wait_until_finished()
    assert checkpoint._unreadable_reason(os.path.join(tmp_path, "1")) is None
    reopened = checkpoint.create_checkpoint_manager(str(tmp_path), read_only=True)
    assert reopened.latest_step() == 1


def test_host_leaves_need_no_sharding_metadata(tmp_path):
    """Only leaves saved from a jax.Array carry sharding metadata: a step with numpy leaves
    (written by orbax directly, as before save_checkpoint put them on device) is readable,
    and loses that only when a jax.Array leaf's sharding is gone."""
    manager = checkpoint.create_checkpoint_manager(str(tmp_path), async_save=False)
    state = {"step": np.int32(1), "params": {"w": np.ones((2, 3), np.float32)}, "x": jnp.ones(2)}
    json_items = {name: ocp.args.JsonSave({}) for name in checkpoint.ITEM_NAMES[1:]}
    manager.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), **json_items))
    manager.close()
    step_dir = os.path.join(tmp_path, "1")
    assert checkpoint._unreadable_reason(step_dir) is None
    DAMAGE["no_sharding_file"](step_dir)
    assert "sharding metadata missing" in checkpoint._unreadable_reason(step_dir)


def test_a_fine_tuning_layout_is_fixed_by_the_checkpoint():
    """LoRA settings and the trainable / frozen split shape the train state: resuming under
    another one is refused with the fields named (not an orbax shape error)."""
    stored = {
        "model": {"name": "pi0"},
        "lora": {"rank": 16, "alpha": 16.0},
        "optimizer": {"lr": 1e-3, "trainable": "expert"},
    }
    same_but_lr = {**stored, "optimizer": {"lr": 5e-4, "trainable": "expert"}}
    compat.check_resume(stored, same_but_lr, "W", "use a new --workdir")
    other = {**stored, "lora": {"rank": 8, "alpha": 16.0}, "optimizer": {"lr": 1e-3}}
    with pytest.raises(
        ValueError, match=r"lora\.rank.*optimizer\.trainable|optimizer\.trainable.*lora\.rank"
    ):
        compat.check_resume(stored, other, "W", "use a new --workdir")


def test_small_replicated_arrays_are_written_whole_and_large_ones_in_parallel(tmp_path, caplog):
    """On an 8-device mesh a replicated array is written replica-parallel (one device-side
    slice program per replica) only when each slice has at least
    MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL bytes; small arrays are written whole. Both restore
    exactly."""
    devices = np.asarray(jax.devices())
    assert len(devices) == 8  # tests/conftest.py's host devices
    replicated = jax.sharding.NamedSharding(
        jax.sharding.Mesh(devices, ("data",)), jax.sharding.PartitionSpec()
    )
    rows = checkpoint.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL * 8 // (4 * 256)  # 1 MiB slices
    small = {"b": np.arange(24, dtype=np.float32).reshape(3, 8), "s": np.float32(2.0)}
    large = {"w": np.random.default_rng(0).normal(size=(rows, 256)).astype(np.float32)}

    def save_and_count_slices(name, tree):
        state = jax.device_put({"step": np.int32(1), "params": tree}, replicated)
        manager = checkpoint.create_checkpoint_manager(str(tmp_path / name), async_save=False)
        caplog.clear()
        with caplog.at_level(logging.WARNING), jax.log_compiles():
            checkpoint.save_checkpoint(
                manager, 1, state, config={}, norm_stats={}, data_state={"batches_consumed": 1}
            )
        manager.close()
        restored = ocp.PyTreeCheckpointer().restore(str(tmp_path / name / "1" / "state"))
        for key, value in tree.items():
            np.testing.assert_array_equal(np.asarray(restored["params"][key]), value)
        return sum("Compiling jit(slice)" in r.getMessage() for r in caplog.records)

    assert save_and_count_slices("small", small) == 0
    assert save_and_count_slices("large", large) > 0
