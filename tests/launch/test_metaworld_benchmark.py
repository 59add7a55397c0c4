"""launch/metaworld_benchmark.py: the planned commands, waiting for shared demos, the table."""

import json
import os
import sys

import pytest

from action_gen import cli

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "launch"))
import metaworld_benchmark as bench  # noqa: E402


def _write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)


def _result(rate):
    return {"success_rate": rate, "success_ci95_low": rate - 0.1, "success_ci95_high": 1.0}


def test_plan_shares_demos_and_orders_runs(tmp_path):
    args = bench.parse_args(
        [
            "--workdir",
            str(tmp_path),
            "--tasks",
            "reach,push",
            "--steps",
            "push=6000,flow:reach=4000",
            "--multitask",
            "--multitask_steps",
            "100",
            "--image_tasks",
            "reach",
        ]
    )
    runs = bench.plan_runs(args, str(tmp_path))
    names = [os.path.basename(r["dir"]) for r in runs]
    assert names == [
        "dp_reach",
        "dp_push_steps_6000",
        "flow_reach_steps_4000",
        "flow_push_steps_6000",
        "reg_reach",
        "reg_push_steps_6000",
        "dp_reach_image_corner2:64_steps_3000",
        "mt_dp_100",
    ]
    assert [r.get("collects") for r in runs[:4]] == [True, True, False, False]
    push = runs[1]["command"]
    assert "--config=configs/diffusion_unet_metaworld.py:task=push,cpu,steps=6000" in push
    assert f"--config.data.dataset_dir={tmp_path}/data/push" in push
    assert "task=reach+push,cpu,steps=100" in " ".join(runs[-1]["command"])
    # Runs that read shared demos wait for them; the multi-task run links them when ready.
    assert not bench._demos_ready(args, str(tmp_path), runs[2])
    assert not bench._demos_ready(args, str(tmp_path), runs[-1])
    for task in ("reach", "push"):
        _write(f"{tmp_path}/data/{task}/metaworld_{task}/1.0.0/dataset_info.json", {})
    assert bench._demos_ready(args, str(tmp_path), runs[2])
    assert bench._demos_ready(args, str(tmp_path), runs[-1])
    assert os.path.islink(tmp_path / "mt_dp_100" / "dataset" / "push")


def test_reevaluate_evaluates_every_trained_run_again(tmp_path):
    argv = ["--workdir", str(tmp_path), "--tasks", "reach,push", "--methods", "diffusion"]
    runs = bench.plan_runs(bench.parse_args(argv), str(tmp_path))
    assert all(r["command"][-1] == "--mode=train_and_eval" for r in runs)
    _write(f"{runs[0]['dir']}/results.json", _result(0.9))  # reach: trained, evaluated
    os.makedirs(f"{runs[0]['dir']}/checkpoints/2000")
    assert bench.runs_to_start(bench.parse_args(argv), runs) == [runs[1]]
    args = bench.parse_args([*argv, "--reevaluate"])
    runs = bench.plan_runs(args, str(tmp_path))
    assert all(r["command"][-1] == "--mode=eval" for r in runs)
    assert bench.runs_to_start(args, runs) == [runs[0]]  # push was never trained


def test_table_against_expert(tmp_path):
    args = bench.parse_args(
        [
            "--workdir",
            str(tmp_path),
            "--tasks",
            "reach,push",
            "--methods",
            "diffusion,flow",
            "--multitask_steps",
            "100",
            "--steps",
            "diffusion:push=6000",
        ]
    )
    _write(f"{tmp_path}/data/reach/r/1.0.0/expert_stats.json", {"success_rate": 1.0})
    _write(f"{tmp_path}/data/push/p/1.0.0/expert_stats.json", {"success_rate": 0.8})
    _write(f"{tmp_path}/dp_reach/results.json", _result(0.9))
    _write(f"{tmp_path}/dp_push/results.json", _result(0.1))  # not the 6k run: ignored
    _write(f"{tmp_path}/dp_push_steps_6000/results.json", _result(0.8))
    _write(f"{tmp_path}/flow_reach/results.json", _result(1.0))
    _write(
        f"{tmp_path}/mt_dp_100/results.json",
        {"tasks": {"metaworld:reach": _result(0.7), "metaworld:push": _result(0.4)}},
    )
    rows = bench.tabulate(args, str(tmp_path))
    assert rows[1]["diffusion_vs_expert"] == pytest.approx(1.0)
    assert rows[1]["multitask_vs_expert"] == pytest.approx(0.5)
    assert "flow" not in rows[1]  # not run yet: a dash in the table
    text = bench.write_table(args, str(tmp_path), rows)
    assert "| push | 80% | 80% [70, 100] (6k steps) | — | 40% [30, 100] |" in text
    assert "diffusion: mean success / expert = 0.95 over 2 tasks; min 0.90" in text
    assert (tmp_path / "results.csv").exists()


def test_unknown_method_is_rejected(tmp_path):
    # A usage error is the front door's UserError (one line, exit status 2; action_gen/cli.py).
    with pytest.raises(cli.UserError, match="unknown method 'gan'"):
        bench.parse_args(["--workdir", str(tmp_path), "--methods", "diffusion,gan"])
    for bad in ("push", "push=many", "gan:push=6000"):
        with pytest.raises(cli.UserError):
            bench.parse_args(["--workdir", str(tmp_path), "--steps", bad])
