"""LeRobot datasets (v3.0, v2.1) written in the real layout, converted to RLDS and checked.

The datasets are written here with pyarrow and PyAV (AV1 through libsvtav1 when the
PyAV wheel has it, as LeRobot records; else h264/mpeg4): 2 cameras, 4 episodes, several
episodes per data and video file for v3.0. Frames are smooth gradients that change by a
fixed step per frame and per episode, so a frame taken from the wrong time (a wrong
from_timestamp, an off-by-one) is detected even through lossy coding.
"""

import json
import os
import pathlib
import shutil

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from action_gen.data import convert_lerobot, lerobot, lerobot_write, pipeline, rlds, schema

os.environ.setdefault("SVT_LOG", "1")  # libsvtav1's banner on every encoder open

FPS = 10
LENGTHS = (5, 7, 4, 6)
TASKS = ("pick up the cube", "open the drawer")
# Lossy codecs (AV1 crf 30 on 32x24 frames) change pixels by a few levels.
CODEC_MEAN_ERROR = 6.0


def _frames(episode: int, length: int, h: int, w: int, phase: int) -> np.ndarray:
    """[L, h, w, 3] uint8: a gradient shifted by 8 levels per frame, 20 per episode."""
    y, x = np.mgrid[:h, :w]
    base = 2 * x + 2 * y + 10 * np.arange(3)[:, None, None] + phase
    t = np.arange(length)[:, None, None, None]
    frames = base.transpose(1, 2, 0)[None] + 8 * t + 20 * episode
    return np.clip(frames, 0, 255).astype(np.uint8)


def make_episodes():
    episodes = []
    for i, length in enumerate(LENGTHS):
        rng = np.random.default_rng(i)
        episodes.append(
            {
                "observation": {
                    "state": rng.normal(size=(length, 3)).astype(np.float32),
                    "image/top": _frames(i, length, 24, 32, phase=0),
                    "image/wrist": _frames(i, length, 16, 16, phase=30),
                },
                "action": rng.normal(size=(length, 2)).astype(np.float32),
                "language_instruction": TASKS[i % 2],
            }
        )
    return episodes


EPISODES = make_episodes()


def _write(root, version, **kw):
    return pathlib.Path(
        lerobot_write.write_lerobot_dataset(EPISODES, root, fps=FPS, version=version, **kw)
    )


@pytest.fixture(scope="module")
def v30(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("v30") / "koch_pick", "v3.0", episodes_per_file=3)


@pytest.fixture(scope="module")
def v21(tmp_path_factory):
    # One camera as MP4, the other as PNG inside the parquet (dtype "image").
    return _write(tmp_path_factory.mktemp("v21") / "so100", "v2.1", video_cameras=["top"])


def _check_frames(got: np.ndarray, want: np.ndarray, where: str):
    """Each decoded frame is close to its source and closer to it than to its neighbours."""
    assert got.shape == want.shape, where
    err = np.abs(got.astype(np.float64)[:, None] - want.astype(np.float64)[None]).mean((2, 3, 4))
    assert (np.diag(err) < CODEC_MEAN_ERROR).all(), (where, np.diag(err))
    np.testing.assert_array_equal(err.argmin(1), np.arange(len(want)), err_msg=where)


def _check_converted(path, exact_cameras=()):
    assert rlds.resolve_dataset_dir(path) == pathlib.Path(path)
    got = list(rlds.load_rlds_episodes(path).as_numpy_iterator())
    assert [len(e["action"]) for e in got] == list(LENGTHS)  # episode boundaries
    for i, (g, want) in enumerate(zip(got, EPISODES, strict=True)):
        obs = g["observation"]
        np.testing.assert_array_equal(obs["state"], want["observation"]["state"])
        np.testing.assert_array_equal(g["action"], want["action"])
        assert set(g["language_instruction"]) == {want["language_instruction"].encode()}
        assert g["episode_metadata"]["episode_index"] == i
        assert g["episode_metadata"]["fps"] == FPS
        for camera in ("top", "wrist"):
            key = f"image/{camera}"
            if camera in exact_cameras:
                np.testing.assert_array_equal(obs[key], want["observation"][key])
            else:
                _check_frames(obs[key], want["observation"][key], f"episode {i} {camera}")
    return got


def test_v30_layout_is_lerobots(v30):
    info = json.loads((v30 / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["features"]["observation.images.top"]["dtype"] == "video"
    expected_codec = "av1" if "libsvtav1" in av.codecs_available else None
    if expected_codec:
        assert info["features"]["observation.images.top"]["info"]["video.codec"] == "av1"
    # Two data files and two video files per camera: episodes 0-2, then 3.
    for rel in (
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "videos/observation.images.top/chunk-000/file-001.mp4",
        "videos/observation.images.wrist/chunk-000/file-000.mp4",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
    ):
        assert (v30 / rel).is_file(), rel
    episodes = pq.read_table(v30 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["data/file_index"] for e in episodes] == [0, 0, 0, 1]
    starts = [e["videos/observation.images.top/from_timestamp"] for e in episodes]
    np.testing.assert_allclose(starts, [0, 0.5, 1.2, 0], atol=1e-6)
    assert [e["dataset_from_index"] for e in episodes] == [0, 5, 12, 16]
    with av.open(os.fspath(v30 / "videos/observation.images.top/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].frames == sum(LENGTHS[:3])
    tasks = pq.read_table(v30 / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == list(TASKS)
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]


def test_convert_v30(v30, tmp_path):
    out = lerobot.convert_lerobot_dataset(v30, tmp_path)
    assert out == os.fspath(tmp_path / "koch_pick" / "1.0.0")
    got = _check_converted(out)
    assert got[0]["episode_metadata"]["source"] == os.fspath(v30.resolve()).encode()
    # The converted dataset feeds the training stream with both cameras.
    stats = pipeline.compute_dataset_norm_stats(out)
    batches = pipeline.create_train_dataset(
        out, obs_horizon=2, action_horizon=4, batch_size=3, norm_stats=stats, shuffle_buffer=4
    )
    batch = next(pipeline.iterate_numpy_batches(batches))
    assert batch[schema.image_key("top")].shape == (3, 2, 24, 32, 3)
    assert batch[schema.image_key("wrist")].shape == (3, 2, 16, 16, 3)
    assert batch[schema.ACTIONS].shape == (3, 4, 2)


def test_convert_v21_video_and_png_camera(v21, tmp_path):
    info = json.loads((v21 / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    assert info["features"]["observation.images.wrist"]["dtype"] == "image"
    assert (v21 / "videos/chunk-000/observation.images.top/episode_000003.mp4").is_file()
    assert (v21 / "data/chunk-000/episode_000002.parquet").is_file()
    out = lerobot.convert_lerobot_dataset(v21, tmp_path / "rlds")
    _check_converted(out, exact_cameras=("wrist",))  # PNG is lossless


def test_cli_is_idempotent_and_refuses_other_sources(v21, v30, tmp_path, capsys):
    dst = tmp_path / "out"
    args = [os.fspath(v21), os.fspath(dst), "--name", "arm", "--image_encoding", "jpeg"]
    assert convert_lerobot.main(args) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert first == os.fspath(dst / "arm" / "1.0.0")
    features = json.loads((pathlib.Path(first) / "features.json").read_text())
    assert json.dumps(features).count('"encodingFormat": "jpeg"') == 2  # both cameras
    _check_converted(first)  # frames within codec tolerance of the source
    mtime = os.stat(pathlib.Path(first) / "dataset_info.json").st_mtime_ns
    assert convert_lerobot.main([os.fspath(v21), os.fspath(dst), "--name", "arm"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == first
    assert os.stat(pathlib.Path(first) / "dataset_info.json").st_mtime_ns == mtime
    assert convert_lerobot.main([os.fspath(v30), os.fspath(dst), "--name", "arm"]) == 2
    assert "is not the conversion of" in capsys.readouterr().err


# ----------------------------------------------------------------------------- errors


def _copy(src, tmp_path) -> pathlib.Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_info(root, **changes):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del info[key]
        else:
            info[key] = value
    path.write_text(json.dumps(info))


def _set_timestamps(file, episode, fn):
    table = pq.read_table(file)
    ts = table.column("timestamp").to_numpy().copy()
    rows = np.flatnonzero(table.column("episode_index").to_numpy() == episode)
    ts[rows] = fn(ts[rows])
    i = table.column_names.index("timestamp")
    pq.write_table(table.set_column(i, "timestamp", pa.array(ts.astype(np.float32))), file)


@pytest.mark.parametrize("key", ["fps", "features", "data_path", "video_path"])
def test_missing_info_key(v30, tmp_path, key):
    root = _copy(v30, tmp_path)
    _edit_info(root, **{key: None})
    with pytest.raises(lerobot.LeRobotFormatError, match=rf"meta/info.json: missing key '{key}'"):
        lerobot.convert_lerobot_dataset(root, tmp_path / "out")


def test_unsupported_version(v30, tmp_path):
    root = _copy(v30, tmp_path)
    _edit_info(root, codebase_version="v1.6")
    with pytest.raises(lerobot.LeRobotFormatError, match="'v1.6' is not supported"):
        lerobot.convert_lerobot_dataset(root, tmp_path / "out")


def test_timestamp_gap_names_file_episode_key(v30, tmp_path):
    root = _copy(v30, tmp_path)
    file = root / "data/chunk-000/file-000.parquet"
    _set_timestamps(file, 1, lambda ts: np.where(np.arange(len(ts)) >= 3, ts + 0.2, ts))
    with pytest.raises(lerobot.LeRobotFormatError) as e:
        list(lerobot.iterate_lerobot_episodes(root))
    msg = str(e.value)
    assert f"{file} episode 1 key 'timestamp'" in msg and "gap between frame 2" in msg


def test_non_monotonic_timestamps(v21, tmp_path):
    root = _copy(v21, tmp_path)
    file = root / "data/chunk-000/episode_000002.parquet"
    _set_timestamps(file, 2, lambda ts: ts[[0, 2, 1, 3]])
    with pytest.raises(
        lerobot.LeRobotFormatError, match="episode 2 key 'timestamp'.*not increasing"
    ):
        list(lerobot.iterate_lerobot_episodes(root))


def test_video_fps_mismatch(v21, tmp_path):
    root = _copy(v21, tmp_path)
    video = root / "videos/chunk-000/observation.images.top/episode_000001.mp4"
    lerobot_write.encode_video(EPISODES[1]["observation"]["image/top"], video, fps=2 * FPS)
    with pytest.raises(lerobot.LeRobotFormatError) as e:
        list(lerobot.iterate_lerobot_episodes(root))
    msg = str(e.value)
    assert str(video) in msg and "20.000 fps does not match" in msg
    assert "'observation.images.top'" in msg


def test_video_too_short(v21, tmp_path):
    root = _copy(v21, tmp_path)
    video = root / "videos/chunk-000/observation.images.top/episode_000000.mp4"
    lerobot_write.encode_video(EPISODES[0]["observation"]["image/top"][:3], video, fps=FPS)
    with pytest.raises(lerobot.LeRobotFormatError, match=r"episode 0 .*ends before t=0\.3"):
        list(lerobot.iterate_lerobot_episodes(root))


def test_episode_length_mismatch(v30, tmp_path):
    root = _copy(v30, tmp_path)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    lengths = table.column("length").to_pylist()
    lengths[2] += 1
    i = table.column_names.index("length")
    pq.write_table(table.set_column(i, "length", pa.array(lengths, pa.int64())), path)
    with pytest.raises(lerobot.LeRobotFormatError, match="episode 2: 4 rows.*length 5"):
        list(lerobot.iterate_lerobot_episodes(root))


def test_inspect_and_validate_name_a_lerobot_dataset(v30, tmp_path, capsys):
    """`data.inspect` describes a LeRobot directory (features, cameras, what a run reads);
    `data.validate` says to convert it first; a broken info.json is named."""
    from action_gen import cli
    from action_gen.data import inspect as inspect_cli
    from action_gen.data import validate

    assert inspect_cli.main([str(v30)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("LeRobot dataset (v3.0, fps ")
    assert "observation.state: float32" in out and "action: float32" in out
    for name, key in lerobot.read_lerobot_info(v30).cameras.items():
        assert f"{key} -> camera {name!r}" in out
    with pytest.raises(cli.UserError, match="is a LeRobot dataset: validation reads RLDS"):
        validate.main(["validate", str(v30)])
    broken = _copy(v30, tmp_path)
    (broken / lerobot.INFO_PATH).write_text('{"codebase_version": "v3.0"')
    with pytest.raises(lerobot.LeRobotFormatError, match="info.json is not valid JSON"):
        inspect_cli.main([str(broken)])
