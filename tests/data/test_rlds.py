"""RLDS write -> read round trip, and readable errors on broken datasets."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from action_gen.data import rlds, schema

LENGTHS = (3, 1, 6)


def make_episodes(lengths=LENGTHS, state_dim=3, action_dim=2, images=True):
    episodes = []
    for i, length in enumerate(lengths):
        rng = np.random.default_rng(i)
        obs = {"state": rng.normal(size=(length, state_dim)).astype(np.float32)}
        if images:
            obs["image/wrist"] = rng.integers(0, 255, (length, 4, 5, 3), dtype=np.uint8)
        episodes.append(
            {
                "observation": obs,
                "action": rng.uniform(-2, 3, size=(length, action_dim)).astype(np.float32),
                "reward": rng.normal(size=length).astype(np.float32),
                "language_instruction": f"push block {i}",
                "episode_metadata": {"seed": i},
            }
        )
    return episodes


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlds")
    episodes = make_episodes()
    path = rlds.write_rlds_dataset(episodes, root, name="toy", shard_size=2)
    return root, path, episodes


def test_layout(written):
    root, path, _ = written
    assert path == os.fspath(root / "toy" / "1.0.0")
    names = sorted(os.listdir(path))
    assert "dataset_info.json" in names and "features.json" in names
    assert [n for n in names if ".tfrecord-" in n] == [
        "toy-train.tfrecord-00000-of-00002",
        "toy-train.tfrecord-00001-of-00002",
    ]
    builder = tfds.builder_from_directory(path)
    assert builder.info.splits["train"].num_examples == len(LENGTHS)
    steps = builder.info.features["steps"]
    for key in (
        "observation",
        "action",
        "reward",
        "discount",
        "is_first",
        "is_last",
        "is_terminal",
        "language_instruction",
    ):
        assert key in steps.feature
    assert "seed" in builder.info.features["episode_metadata"]
    # Plain TFDS reading works too.
    (episode,) = builder.as_dataset(split="train[:1]")
    assert len(list(episode["steps"])) == LENGTHS[0]


@pytest.mark.parametrize("via_parent", [False, True])
def test_round_trip(written, via_parent):
    root, path, episodes = written
    trajs = list(rlds.load_rlds_episodes(root if via_parent else path).as_numpy_iterator())
    assert len(trajs) == len(episodes)
    for traj, ep in zip(trajs, episodes, strict=True):
        length = ep["action"].shape[0]
        for key, value in ep["observation"].items():
            got = traj["observation"][key]
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)
        assert traj["action"].dtype == np.float32
        np.testing.assert_array_equal(traj["action"], ep["action"])
        np.testing.assert_array_equal(traj["reward"], ep["reward"])
        np.testing.assert_array_equal(traj["discount"], np.ones(length, np.float32))
        first = np.arange(length) == 0
        last = np.arange(length) == length - 1
        np.testing.assert_array_equal(traj["is_first"], first)
        np.testing.assert_array_equal(traj["is_last"], last)
        np.testing.assert_array_equal(traj["is_terminal"], last)
        assert list(traj["language_instruction"]) == [ep["language_instruction"].encode()] * length
        assert traj["episode_metadata"]["seed"] == ep["episode_metadata"]["seed"]


def test_sharded_read(written):
    _, path, _ = written
    seen = []
    for index in range(2):
        ds = rlds.load_rlds_episodes(path, shard_index=index, num_shards=2)
        seen += [t["action"].shape[0] for t in ds.as_numpy_iterator()]
    assert seen == list(LENGTHS)
    with pytest.raises(ValueError, match="fewer than num_shards"):
        rlds.load_rlds_episodes(path, num_shards=4)


def test_skip_image_decoding(written):
    _, path, _ = written
    traj = next(rlds.load_rlds_episodes(path, decode_images=False).as_numpy_iterator())
    assert traj["observation"]["image/wrist"][0].startswith(b"\x89PNG")


def test_write_errors(tmp_path, written):
    root, _, _ = written
    with pytest.raises(FileExistsError, match="toy"):
        rlds.write_rlds_dataset(make_episodes(), root, name="toy")
    with pytest.raises(ValueError, match="no episodes"):
        rlds.write_rlds_dataset([], tmp_path)
    mismatched = make_episodes((2,)) + make_episodes((2,), action_dim=5)
    with pytest.raises(ValueError, match="episode 1"):
        rlds.write_rlds_dataset(mismatched, tmp_path, name="bad")
    # A failed write leaves nothing that looks like a dataset behind.
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


def _copy(written, tmp_path):
    _, path, _ = written
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        rlds.load_rlds_episodes(tmp_path / "does_not_exist")


def test_dir_without_metadata(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset_info\.json.*empty"):
        rlds.load_rlds_episodes(tmp_path / "empty")


def test_corrupt_dataset_info(written, tmp_path):
    dst = _copy(written, tmp_path)
    (dst / "dataset_info.json").write_text('{"name": "toy", garbled')
    with pytest.raises(ValueError, match=f"{dst}/dataset_info.json"):
        rlds.load_rlds_episodes(dst)


def test_wrong_dataset_info_content(written, tmp_path):
    dst = _copy(written, tmp_path)
    (dst / "dataset_info.json").write_text(json.dumps({"splits": "nonsense"}))
    with pytest.raises(ValueError, match=str(dst)):
        rlds.load_rlds_episodes(dst)


def test_missing_features_json(written, tmp_path):
    dst = _copy(written, tmp_path)
    os.remove(dst / "features.json")
    with pytest.raises(FileNotFoundError, match="features.json"):
        rlds.load_rlds_episodes(dst)


def test_not_rlds_features(tmp_path):
    # A valid TFDS dataset that is not RLDS (no "steps"). Written by hand because the
    # generic TFDS builder needs importlib_resources, which is not a dependency.
    features = tfds.features.FeaturesDict({"x": tfds.features.Scalar(dtype=np.int64)})
    with tf.io.TFRecordWriter(str(tmp_path / "flat-train.tfrecord-00000-of-00001")) as w:
        w.write(features.serialize_example({"x": 1}))
    tfds.folder_dataset.write_metadata(data_dir=tmp_path, features=features, check_data=False)
    with pytest.raises(ValueError, match="missing key 'steps'"):
        rlds.load_rlds_episodes(tmp_path)


def test_truncated_shard(written, tmp_path):
    dst = _copy(written, tmp_path)
    shard = dst / "toy-train.tfrecord-00001-of-00002"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(shard)):
        rlds.load_rlds_episodes(dst)


def test_missing_shard(written, tmp_path):
    dst = _copy(written, tmp_path)
    shard = dst / "toy-train.tfrecord-00000-of-00002"
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=str(shard)):
        rlds.load_rlds_episodes(dst)


def test_unknown_split(written):
    _, path, _ = written
    with pytest.raises(ValueError, match="no split 'test'"):
        rlds.load_rlds_episodes(path, split="test")


def test_uses_schema_keys():
    assert schema.RLDS_OBSERVATION == "observation" and schema.RLDS_ACTION == "action"
