"""The in-memory training stream (data/memory.py, `data.loader='memory'`): its windows are
the dataset's, it is a function of (seed, batch index), processes split the global batch,
it holds the same windows and stats as the tf.data stream, and a run trains and resumes
with TensorFlow absent."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from action_gen import config_schema
from action_gen.data import lerobot as lerobot_lib
from action_gen.data import lerobot_write, memory, normalize, pipeline, schema, sources, windows
from tests.data.test_lerobot import FPS, LENGTHS, make_episodes

REPO = pathlib.Path(__file__).resolve().parents[2]
T, H = 2, 3
STATE_DIM, ACTION_DIM = 3, 2
STEPS = sum(LENGTHS)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A LeRobot v3.0 dataset (4 episodes, 2 video cameras) and the episodes written."""
    episodes = make_episodes()
    root = tmp_path_factory.mktemp("memory") / "koch_pick"
    lerobot_write.write_lerobot_dataset(episodes, root, fps=FPS, version="v3.0")
    return root, episodes


@pytest.fixture(scope="module")
def data(source):
    return memory.load_dataset(
        source[0], obs_horizon=T, action_horizon=H, state_dim=STATE_DIM, action_dim=ACTION_DIM
    )


def _batch(data, k, **kw):
    kw = {"global_batch_size": 6, "seed": 3, **kw}
    return memory.batch_at(data, k, **kw)


def test_windows_are_the_datasets(source, data):
    _, episodes = source
    assert data.num_windows == STEPS
    assert set(data.images) == {"top", "wrist"}
    row = 0
    for episode in episodes:
        length = len(episode["action"])
        obs_idx, obs_mask, act_idx, act_mask = windows.window_indices(length, T, H)
        for t in range(length):
            w = row + t
            np.testing.assert_array_equal(
                data.state[data.obs_index[w]], episode["observation"]["state"][obs_idx[t]]
            )
            np.testing.assert_array_equal(data.obs_pad_mask[w], obs_mask[t])
            np.testing.assert_array_equal(
                data.action[data.action_index[w]], episode["action"][act_idx[t]]
            )
            np.testing.assert_array_equal(data.action_pad_mask[w], act_mask[t])
            assert data.prompt[w] == episode["language_instruction"].encode()
        # Video frames are lossy; each is closest to its own source frame.
        frames = data.images["top"][row : row + length].astype(float)
        want = episode["observation"]["image/top"].astype(float)
        err = np.abs(frames[:, None] - want[None]).mean((2, 3, 4))
        np.testing.assert_array_equal(err.argmin(1), np.arange(length))
        row += length


def test_batches_have_the_tfdata_streams_keys_and_dtypes(data):
    batch = _batch(data, 0, image_crop=(12, 12))
    assert batch[schema.OBS_STATE].shape == (6, T, STATE_DIM)
    assert batch[schema.OBS_STATE].dtype == np.float32
    assert batch[schema.OBS_PAD_MASK].shape == (6, T) and batch[schema.OBS_PAD_MASK].dtype == bool
    assert batch[schema.ACTIONS].shape == (6, H, ACTION_DIM)
    assert batch[schema.ACTION_PAD_MASK].shape == (6, H)
    assert batch[schema.PROMPT].dtype == object and isinstance(batch[schema.PROMPT][0], bytes)
    assert batch[schema.DATASET_INDEX].dtype == np.int32
    # Every camera is cropped to the one size (top 24x32, wrist 16x16 frames).
    assert batch[schema.image_key("top")].shape == (6, T, 12, 12, 3)
    assert batch[schema.image_key("wrist")].shape == (6, T, 12, 12, 3)
    assert batch[schema.image_key("top")].dtype == np.uint8
    with pytest.raises(ValueError, match=r"data.image_crop \(20, 12\) is larger .* \(16, 16\)"):
        _batch(data, 0, image_crop=(20, 12))


def test_an_epoch_is_a_permutation_and_the_stream_a_function_of_seed_and_index(data):
    n = data.num_windows
    epoch0 = memory.window_ids(n, seed=3, start=0, count=n)
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(n))
    epoch1 = memory.window_ids(n, seed=3, start=n, count=n)
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(n))
    assert not np.array_equal(epoch0, epoch1)  # reshuffled every epoch
    # A window range across the epoch boundary is the two epochs' pieces.
    np.testing.assert_array_equal(
        memory.window_ids(n, seed=3, start=n - 4, count=8), np.r_[epoch0[-4:], epoch1[:4]]
    )
    assert not np.array_equal(memory.window_ids(n, seed=4, start=0, count=n), epoch0)

    stream = memory.iterate_batches(data, global_batch_size=6, seed=3, image_crop=(12, 12))
    first = [next(stream) for _ in range(5)]
    resumed = next(
        memory.iterate_batches(
            data, global_batch_size=6, seed=3, image_crop=(12, 12), start_batch=3
        )
    )
    for key, value in first[3].items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
        np.testing.assert_array_equal(_batch(data, 3, image_crop=(12, 12))[key], value, err_msg=key)
    assert not np.array_equal(first[0][schema.ACTIONS], first[1][schema.ACTIONS])


def test_processes_split_the_global_batch(data):
    whole = _batch(data, 7, image_crop=(12, 10))
    parts = [_batch(data, 7, image_crop=(12, 10), process_index=p, process_count=2) for p in (0, 1)]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=key)
    with pytest.raises(ValueError, match="not divisible by 4 processes"):
        _batch(data, 0, process_count=4)


def test_crop_is_one_window_per_sample_shared_by_its_frames(data):
    full = _batch(data, 2)
    cropped = _batch(data, 2, image_crop=(12, 10))
    rng = np.random.default_rng([3, 2, 0])  # the top camera's offsets of batch 2, seed 3
    top, left = memory.crop_offsets(rng, 6, (24, 32), (12, 10))
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 1
    for b in range(6):
        want = full[schema.image_key("top")][b, :, top[b] : top[b] + 12, left[b] : left[b] + 10]
        np.testing.assert_array_equal(cropped[schema.image_key("top")][b], want)


def test_the_tfdata_stream_holds_the_same_windows_and_stats(source, data, tmp_path):
    """One epoch of each stream (the dataset fits the tf.data shuffle buffer, so its first N
    windows are one epoch too): the same multiset of windows, and the same norm stats."""
    root, _ = source
    converted = tmp_path / "rlds"
    lerobot_lib.convert_lerobot_dataset(root, converted)
    tf_stats = pipeline.compute_dataset_norm_stats(converted, cache=False)
    stats = memory.compute_norm_stats(root)
    for part in (normalize.STATE, normalize.ACTIONS):
        for name in ("min", "max", "mean", "std", "q01", "q99"):
            np.testing.assert_allclose(stats[part][name], tf_stats[part][name], rtol=1e-6)
    assert (stats["_episodes"], stats["_steps"]) == (len(LENGTHS), STEPS)

    tf_batches = pipeline.iterate_numpy_batches(
        pipeline.create_train_dataset(
            str(converted), obs_horizon=T, action_horizon=H, batch_size=1,
            norm_stats=tf_stats, shuffle_buffer=1000, seed=0,
        )
    )  # fmt: skip
    tf_windows = [next(tf_batches) for _ in range(STEPS)]
    mem_windows = [_batch(data, k, global_batch_size=1, seed=0) for k in range(STEPS)]

    def key(batch):
        return (
            batch[schema.OBS_STATE].tobytes() + batch[schema.ACTIONS].tobytes()
            + batch[schema.OBS_PAD_MASK].tobytes() + batch[schema.ACTION_PAD_MASK].tobytes()
            + batch[schema.PROMPT][0]
        )  # fmt: skip

    assert sorted(map(key, tf_windows)) == sorted(map(key, mem_windows))


def test_unsupported_runs_are_refused(source, tmp_path):
    root, _ = source
    config = config_schema.base_config()
    config.data.loader = "memroy"
    with pytest.raises(ValueError, match="data.loader='memroy'; choose one of 'tfdata', 'memory'"):
        sources.loader(config.data)
    with pytest.raises(ValueError, match="not a mixture of 2"):
        memory.check_supported([root, root], foreign_layout=False)
    with pytest.raises(ValueError, match="needs TensorFlow"):
        memory.check_supported([tmp_path], foreign_layout=False)
    with pytest.raises(FileNotFoundError, match="no dataset directory .*missing"):
        memory.check_supported([tmp_path / "missing"], foreign_layout=False)
    with pytest.raises(ValueError, match="data.dataset_names or config.robot"):
        memory.check_supported([root], foreign_layout=True)


# Runs a module as __main__ with TensorFlow absent (as on the lent GPU machines): any
# import of it fails, and find_spec reports it missing.
_WITHOUT_TF = (
    "import runpy, sys\n"
    "sys.modules.update(tensorflow=None, tensorflow_datasets=None)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _main_without_tf(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TF, "action_gen.main", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return run


@pytest.mark.slow
def test_a_run_trains_and_resumes_without_tensorflow(tmp_path):
    """The ALOHA image config at smoke size on a LeRobot dataset in its layout (one top
    camera, 14-d state and action), trained with data.loader=memory and TensorFlow absent;
    then resumed to more steps; the stored data state names the LeRobot directory."""
    rng = np.random.default_rng(0)
    episodes = [
        {
            "observation": {
                "state": rng.normal(size=(12, 14)).astype(np.float32),
                "image/top": rng.integers(0, 255, size=(12, 24, 32, 3), dtype=np.uint8),
            },
            "action": rng.normal(size=(12, 14)).astype(np.float32),
            "language_instruction": "transfer the cube",
        }
        for _ in range(3)
    ]
    demos = tmp_path / "demos"
    lerobot_write.write_lerobot_dataset(
        episodes, demos / "aloha_sim_transfer_cube_scripted_top24x32", fps=50, version="v3.0"
    )
    workdir = tmp_path / "run"
    args = [
        f"--config=configs/diffusion_unet_aloha.py:smoke,image=24x32,demos={demos}",
        "--config.data.loader=memory",
        f"--workdir={workdir}",
        "--mode=train",
    ]
    run = _main_without_tf(*args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (workdir / "dataset").exists() is False  # nothing converted to RLDS
    # Metrics went through tensorboard's own event writer: TensorBoard reads the losses.
    from tensorboard.backend.event_processing import event_accumulator

    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    accumulator = event_accumulator.EventAccumulator(str(events))
    accumulator.Reload()
    losses = accumulator.Scalars("loss")
    assert [e.step for e in losses] == [2, 4] and all(np.isfinite(e.value) for e in losses)
    run = _main_without_tf(*args, "--config.train.num_steps=6")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Resumed from" in run.stderr and "step 4" in run.stderr

    from action_gen import run as run_lib

    directory = run_lib.Run.open(str(workdir), role="policy")
    assert directory.latest_step() == 6
