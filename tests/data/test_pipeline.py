"""The training stream: schema keys and shapes, normalization, determinism, exact resume."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from action_gen import config_schema
from action_gen.data import normalize as norm
from action_gen.data import pipeline, rlds, schema, transforms
from tests.data.test_rlds import make_episodes

T, H, B = 2, 4, 5


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    return rlds.write_rlds_dataset(make_episodes((7, 2, 9, 4)), root, shard_size=3)


@pytest.fixture(scope="module")
def stats(dataset_dir):
    return pipeline.compute_dataset_norm_stats(dataset_dir)


def _train(dataset_dir, stats, **kw):
    args = dict(
        obs_horizon=T, action_horizon=H, batch_size=B, norm_stats=stats, shuffle_buffer=8, seed=3
    )
    return pipeline.create_train_dataset(dataset_dir, **(args | kw))


def _take(dataset, n, start=0):
    it = pipeline.iterate_numpy_batches(dataset, start_batch=start)
    return [next(it) for _ in range(n)]


def test_norm_stats_and_cache(dataset_dir, stats):
    episodes = make_episodes((7, 2, 9, 4))
    states = np.concatenate([e["observation"]["state"] for e in episodes]).astype(np.float64)
    actions = np.concatenate([e["action"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["state"]["mean"], states.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["actions"]["min"], actions.min(0))
    np.testing.assert_allclose(stats["actions"]["q99"], np.quantile(actions, 0.99, axis=0))
    assert stats["actions"]["count"] == 22
    cache = os.path.join(dataset_dir, pipeline.NORM_STATS_FILE)
    assert norm.load_norm_stats(cache) == stats
    assert pipeline.compute_dataset_norm_stats(dataset_dir) == stats


def test_stale_cache_recomputed(dataset_dir, stats, tmp_path):
    stale = dict(stats, _fingerprint="old")
    stale["actions"] = dict(stats["actions"], min=[-99.0, -99.0])
    cache = tmp_path / "ds"
    shutil.copytree(dataset_dir, cache)
    norm.save_norm_stats(stale, cache / pipeline.NORM_STATS_FILE)
    assert pipeline.compute_dataset_norm_stats(cache) == stats
    saved = json.loads((cache / pipeline.NORM_STATS_FILE).read_text())
    assert saved["_fingerprint"] == stats["_fingerprint"]


def test_unwritable_dataset_dir(dataset_dir, stats, tmp_path, monkeypatch, caplog):
    ro = tmp_path / "ro"
    shutil.copytree(dataset_dir, ro)
    os.remove(ro / pipeline.NORM_STATS_FILE)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    # chmod does not stop root (the CI user), so simulate the failing write.
    monkeypatch.setattr(norm, "save_norm_stats", refuse)
    assert pipeline.compute_dataset_norm_stats(ro) == stats
    assert not (ro / pipeline.NORM_STATS_FILE).exists()
    assert "cannot cache norm stats" in caplog.text


def test_batches_follow_schema(dataset_dir, stats):
    (batch,) = _take(_train(dataset_dir, stats), 1)
    assert batch[schema.OBS_STATE].shape == (B, T, 3)
    assert batch[schema.OBS_STATE].dtype == np.float32
    assert batch[schema.image_key("wrist")].shape == (B, T, 4, 5, 3)
    assert batch[schema.image_key("wrist")].dtype == np.uint8
    assert batch[schema.OBS_PAD_MASK].shape == (B, T)
    assert batch[schema.OBS_PAD_MASK].dtype == bool
    assert batch[schema.ACTIONS].shape == (B, H, 2)
    assert batch[schema.ACTIONS].dtype == np.float32
    assert batch[schema.ACTION_PAD_MASK].shape == (B, H)
    assert batch[schema.PROMPT].shape == (B,)
    assert all(p.startswith(b"push block") for p in batch[schema.PROMPT])


def _normalized(batches, stats):
    """The batches through the run's transform pipeline (normalization on the host)."""
    config = config_schema.complete(
        ml_collections.ConfigDict(
            {"data": {"state_norm": "minmax", "action_norm": "minmax", "obs_horizon": T}}
        )
    )
    pipe = transforms.create_pipeline(config, stats)
    return [pipe.inputs(b)[0] for b in batches]


def test_actions_in_unit_range(dataset_dir, stats):
    # 22 windows per epoch, 9 batches of 5: crosses epoch boundaries.
    batches = _normalized(_take(_train(dataset_dir, stats), 9), stats)
    actions = np.stack([b[schema.ACTIONS] for b in batches])
    assert actions.min() >= -1 - 1e-5 and actions.max() <= 1 + 1e-5
    assert actions.min() < -0.9 and actions.max() > 0.9
    state = np.stack([b[schema.OBS_STATE] for b in batches])
    assert state.min() >= -1 - 1e-5 and state.max() <= 1 + 1e-5


def test_deterministic_and_exact_resume(dataset_dir, stats):
    full = _take(_train(dataset_dir, stats), 8)
    again = _take(_train(dataset_dir, stats), 8)
    resumed = _take(_train(dataset_dir, stats), 3, start=5)
    for a, b in zip(full, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(full[5:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = _take(_train(dataset_dir, stats, seed=4), 1)[0]
    assert not np.array_equal(other[schema.ACTIONS], full[0][schema.ACTIONS])


def test_small_dataset_is_shuffled_as_a_whole(tmp_path):
    """A dataset that fits the shuffle buffer is one block per epoch: the first batches
    draw windows from across all episodes, not from the first `episodes_per_block` of the
    epoch's permutation (blocks of 64 of 200 episodes restricted every run of ~25 demo
    batches to a third of the data; the make-demo regression of issue #32)."""
    episodes = make_episodes([3] * 200, images=False)
    for i, episode in enumerate(episodes):  # the state names the episode
        episode["observation"]["state"][:] = i
    path = rlds.write_rlds_dataset(episodes, tmp_path, shard_size=50)
    stats = pipeline.compute_dataset_norm_stats(path)
    batches = _take(
        pipeline.create_train_dataset(
            path,
            obs_horizon=1,
            action_horizon=2,
            batch_size=64,
            norm_stats=stats,
            shuffle_buffer=10_000,
            seed=0,
            episodes_per_block=64,
        ),
        3,
    )
    seen = {int(s) for b in batches for s in b[schema.OBS_STATE][:, -1, 0]}
    # 192 windows drawn from all 200 episodes: ~123 distinct expected; from 64: at most 64.
    assert len(seen) > 100, len(seen)


def test_bad_arguments(dataset_dir, stats):
    with pytest.raises(ValueError, match="'zscore'"):
        transforms.create_pipeline(
            config_schema.complete(
                ml_collections.ConfigDict(
                    {"data": {"state_norm": "minmax", "action_norm": "zscore"}}
                )
            ),
            stats,
        )
    with pytest.raises(ValueError, match="'actions'"):
        _train(dataset_dir, {"state": stats["state"]})
