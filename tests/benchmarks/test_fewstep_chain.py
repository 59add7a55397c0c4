"""benchmarks/fewstep_chain.py: the export holds every training window exactly once, the
run trains the teacher and each student variant on them and evaluates them, and bad
overrides are refused by name."""

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import fewstep_chain  # noqa: E402

SPEC = "configs/consistency_unet_obstacle.py:tiny"


def test_batch_stream_visits_every_window_once_per_epoch():
    windows = {"x": np.arange(10), "y": np.arange(10) * 2}
    stream = fewstep_chain.batch_stream(windows, batch_size=5, seed=0)
    first_epoch = np.concatenate([next(stream)["x"] for _ in range(2)])
    second_epoch = np.concatenate([next(stream)["x"] for _ in range(2)])
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(10))
    assert not np.array_equal(first_epoch, second_epoch)  # reshuffled
    batch = next(stream)
    np.testing.assert_array_equal(batch["y"], batch["x"] * 2)  # rows stay together
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(fewstep_chain.batch_stream(windows, batch_size=11, seed=0))


def test_overrides_set_nested_fields_and_refuse_unknown_ones():
    config = fewstep_chain.load_config(SPEC)
    fewstep_chain.apply_overrides(
        config, "train.num_steps=7,objective.target=online,optimizer.lr=1e-4"
    )
    assert config.train.num_steps == 7 and config.optimizer.lr == 1e-4
    assert config.objective.target == "online"
    # Bracketed values keep their commas (the split is at the top level only).
    fewstep_chain.apply_overrides(config, "model.down_dims=(8, 16),train.num_steps=3")
    assert tuple(config.model.down_dims) == (8, 16) and config.train.num_steps == 3
    with pytest.raises(KeyError, match="objective.no_such_field"):
        fewstep_chain.apply_overrides(config, "objective.no_such_field=1")
    with pytest.raises(ValueError, match="key=value"):
        fewstep_chain.apply_overrides(config, "train.num_steps")
    assert fewstep_chain.parse_variants("") == [("default", "")]
    with pytest.raises(ValueError, match="no `teacher`"):
        fewstep_chain.export("configs/flow_unet_obstacle.py:runlocal", "/nonexistent", 1, 1)
    with pytest.raises(ValueError, match="image_crop"):
        image = "configs/consistency_unet_metaworld.py:task=reach,image=corner2:64,runlocal"
        fewstep_chain.export(image, "/nonexistent", 1, 1)
    assert fewstep_chain.parse_variants("a:train.num_steps=2;b:") == [
        ("a", "train.num_steps=2"),
        ("b", ""),
    ]


def test_export_then_run_the_chain(tmp_path, monkeypatch):
    monkeypatch.setattr(fewstep_chain, "FIRST_CHUNK_STARTS", 2)
    monkeypatch.setattr(fewstep_chain, "FIRST_CHUNK_SAMPLES", 8)
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    fewstep_chain.export(SPEC, data, max_batches=500, patience=30)
    loaded = np.load(os.path.join(data, fewstep_chain.WINDOWS_FILE))
    with open(os.path.join(data, fewstep_chain.NORM_STATS_FILE)) as f:
        norm_stats = json.load(f)
    # One window per step of the dataset, each exactly once.
    count = norm_stats["actions"]["count"]
    assert all(len(loaded[k]) == count for k in loaded.files)
    rows = {b"".join(loaded[k][i].tobytes() for k in sorted(loaded.files)) for i in range(count)}
    assert len(rows) == count

    fewstep_chain.run(
        data,
        out,
        [("default", ""), ("online", "objective.target=online")],
        episodes=2,
        teacher_steps=None,
        smoke_steps=2,
        common_overrides="model.time_embed_dim=8",  # the teacher and both students
    )
    with open(os.path.join(out, "results.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    teacher, *students = lines
    assert teacher["role"] == "teacher" and teacher["objective"] == "flow"
    teacher_config = fewstep_chain.load_config(SPEC).teacher
    assert teacher["num_sample_steps"] == teacher_config.eval.num_sample_steps
    assert teacher["episodes"] == 2
    # N = 2 intervals: each student evaluated at 1 and 2 steps.
    assert [(s["variant"], s["num_sample_steps"]) for s in students] == [
        ("default", 1),
        ("default", 2),
        ("online", 1),
        ("online", 2),
    ]
    for line in lines:
        assert line["config"] == SPEC and line["train_steps"] == 2
        assert line["overrides"] == "model.time_embed_dim=8"
        # Rates over the 2 episodes (a count / 2), and an episode succeeds or collides.
        assert line["episodes"] == 2
        assert line["success_rate"] in (0.0, 0.5, 1.0) and line["collision_rate"] in (0.0, 0.5, 1.0)
        assert line["success_rate"] + line["collision_rate"] <= 1.0
        first_chunk = line["first_chunk"]  # obstacle: the first chunk's modes, open loop
        assert first_chunk["chunks"] == 16
        shares = (first_chunk[k] for k in ("blend_fraction", "left_fraction", "right_fraction"))
        assert sum(shares) == pytest.approx(1.0)
    assert all(s["objective"] == "consistency" for s in students)
