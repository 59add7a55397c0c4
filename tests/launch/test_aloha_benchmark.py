"""launch/aloha_benchmark.py: rows, the commands it runs, resuming, the table."""

import json
import os
import sys

import pytest

from action_gen import cli

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "launch"))
import aloha_benchmark as bench  # noqa: E402


def test_rows_parse_and_bad_rows_are_named():
    assert bench.parse_row("flow_transfer_cube_image") == {
        "row": "flow_transfer_cube_image",
        "method": "flow",
        "task": "transfer_cube",
        "obs": "image",
    }
    assert len(bench.ROWS) == 8 and all(bench.parse_row(r)["row"] == r for r in bench.ROWS)
    with pytest.raises(cli.UserError, match="unknown row 'dp_cube_state'"):
        bench.parse_args(["--workdir=/tmp/w", "--rows=dp_cube_state"])


def test_commands_follow_the_configs_and_collect(tmp_path):
    args = bench.parse_args(
        [f"--workdir={tmp_path}", "--rows=dp_insertion_state,flow_transfer_cube_image",
         "--steps=300", "--workers=4"]
    )  # fmt: skip
    state, image = args.rows
    demos = os.path.join(str(tmp_path), "demos")
    assert bench.config_arg(args, state) == (
        f"configs/diffusion_unet_aloha.py:task=insertion,state,cpu,steps=300,episodes=100,"
        f"demos={demos}"
    )
    assert bench.config_arg(args, image).startswith(
        "configs/flow_unet_aloha.py:task=transfer_cube,image=240x320,cpu,"
    )
    assert bench.collect_command(args, state)[3:] == [
        "--env=aloha_insertion", "--episodes=50", "--image=none", "--environment_state",
        "--workers=4", f"--out={demos}",
    ]  # fmt: skip
    assert "--image=top:240x320" in bench.collect_command(args, image)
    # The dataset directory it waits for is the one the config reads.
    from configs import diffusion_unet_aloha

    for row, size in ((state, None), (image, (240, 320))):
        name = diffusion_unet_aloha.dataset_name(row["task"], size)
        assert not bench.demos_written(args, row)
        os.makedirs(os.path.join(demos, name))
        open(os.path.join(demos, name, "scripted_stats.json"), "w").close()
        assert bench.demos_written(args, row)
    gpu = bench.parse_args([f"--workdir={tmp_path}", "--rows=dp_insertion_state", "--size=gpu"])
    assert ",cpu" not in bench.config_arg(gpu, gpu.rows[0])


def _write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)


def test_finished_steps_are_skipped_and_the_table_reads_them(tmp_path, monkeypatch):
    args = bench.parse_args([f"--workdir={tmp_path}", "--rows=dp_transfer_cube_state"])
    row = args.rows[0]
    row_dir = tmp_path / "dp_transfer_cube_state"
    result = {"success_rate": 0.89, "success_ci95_low": 0.8137, "success_ci95_high": 0.9375,
              "sampler": "ddim", "num_sample_steps": 10, "stage_1_rate": 0.92,
              "stage_2_rate": 0.91, "stage_3_rate": 0.89, "stage_4_rate": 0.89}  # fmt: skip
    _write(row_dir / "results_dev.json", {**result, "success_rate": 0.9})
    _write(row_dir / "results_test.json", result)
    _write(row_dir / "benchmark.json", {"train_steps": 5000, "batch_size": 128, "demos": 50,
           "train_and_dev_eval_s": 1500.0, "test_eval_s": 300.0, "size": "cpu",
           "machine": "CPU, 2 CPU cores (x86_64)"})  # fmt: skip
    _write(tmp_path / "demos" / "aloha_sim_transfer_cube_scripted_env_state" /
           "scripted_stats.json", {})  # fmt: skip
    ran = []
    monkeypatch.setattr(bench, "run", lambda command, log: ran.append(command) or 0.0)
    bench.run_row(args, row)
    assert ran == []  # demos, training and both evaluations are done
    text = bench.table(args)
    line = next(x for x in text.splitlines() if x.startswith("| transfer_cube | state"))
    assert "89% [81.4, 93.8]" in line and "90% [81.4, 93.8]" in line
    assert "5,000 steps × 128" in line and "92 / 91 / 89 / 89%" in line and "30 min" in line
    assert "| ≈ 90% |" in text and "87.6%" in text  # ACT's figures, cited
    assert "dp_insertion" not in text and "| insertion | state" not in text  # no run, no row


def test_a_missing_test_evaluation_runs_alone_and_is_recorded(tmp_path, monkeypatch):
    args = bench.parse_args([f"--workdir={tmp_path}", "--rows=flow_insertion_state"])
    row_dir = tmp_path / "flow_insertion_state"
    _write(row_dir / "results_dev.json", {"success_rate": 0.5})
    _write(tmp_path / "demos" / "aloha_sim_insertion_scripted_env_state" /
           "scripted_stats.json", {})  # fmt: skip
    ran = []

    def fake_run(command, log):
        ran.append(command)
        _write(row_dir / "results.json", {"success_rate": 0.4})
        return 12.5

    class FakeRun:
        @staticmethod
        def open(path):
            assert path == str(row_dir)
            config = type("C", (), {})()
            config.train = type("T", (), {"num_steps": 10_000})()
            config.data = type("D", (), {"batch_size": 128, "loader": "memory"})()
            return type("R", (), {"config": lambda self: config})()

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "Run", FakeRun)
    monkeypatch.setattr(bench, "machine", lambda: "CPU")
    bench.run_row(args, args.rows[0])
    assert len(ran) == 1 and "--mode=eval" in ran[0]
    assert not any(a.startswith("--config.data.loader") for a in ran[0])  # tf.data: default
    assert f"--config.eval.seed={bench.TEST_SEED}" in ran[0]
    assert json.loads((row_dir / "results_test.json").read_text()) == {"success_rate": 0.4}
    assert not (row_dir / "results.json").exists()
    record = json.loads((row_dir / "benchmark.json").read_text())
    assert record["test_eval_s"] == 12.5 and record["train_steps"] == 10_000
    assert record["loader"] == "memory"  # what the run's stored config says


def test_the_memory_loader_reaches_every_main_command_and_refuses_served(tmp_path, monkeypatch):
    """--loader=memory (the lent GPU machines: no TensorFlow) trains and evaluates with
    data.loader=memory; the served rows' client mapping needs tf.data."""
    args = bench.parse_args(
        [f"--workdir={tmp_path}", "--rows=dp_transfer_cube_image", "--loader=memory",
         "--size=gpu"]
    )  # fmt: skip
    _write(tmp_path / "demos" / "aloha_sim_transfer_cube_scripted_top240x320" /
           "scripted_stats.json", {})  # fmt: skip
    ran = []

    def fake_run(command, log):
        ran.append(command)
        raise RuntimeError("stop after the first command")

    monkeypatch.setattr(bench, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop after"):
        bench.run_row(args, args.rows[0])
    assert ran[0][-2:] == ["--config.data.loader=memory", "--mode=train_and_eval"]
    with pytest.raises(cli.UserError, match="--loader=tfdata"):
        bench.parse_args([f"--workdir={tmp_path}", "--rows=dp_transfer_cube_image",
                          "--served", "--loader=memory"])  # fmt: skip


def test_served_rows_train_for_the_client_and_evaluate_behind_the_server(tmp_path, monkeypatch):
    args = bench.parse_args(
        [f"--workdir={tmp_path}", "--rows=dp_transfer_cube_image", "--served",
         "--image_size=96x128", "--episodes=7"]
    )  # fmt: skip
    row = args.rows[0]
    assert ",openpi_client," in bench.config_arg(args, row)
    row_dir = tmp_path / "dp_transfer_cube_image"
    result = {"success_rate": 0.5, "success_ci95_low": 0.3, "success_ci95_high": 0.7}
    _write(row_dir / "results_dev.json", result)
    _write(row_dir / "results_test.json", result)
    _write(row_dir / "benchmark.json", {"train_steps": 100, "batch_size": 32, "demos": 50})
    _write(tmp_path / "demos" / "aloha_sim_transfer_cube_scripted_top96x128" /
           "scripted_stats.json", {})  # fmt: skip
    ran = []

    def fake_run(command, log):
        ran.append(command)
        _write(row_dir / "results_served.json", {**result, "success_rate": 0.4,
               "stage_1_rate": 0.9, "action_horizon": 10, "clients": 2})  # fmt: skip
        return 60.0

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "Run", type("R", (), {"open": staticmethod(lambda p: FakeOpen)}))
    monkeypatch.setattr(bench, "machine", lambda: "CPU")
    bench.run_row(args, row)
    # Only the served evaluation was missing: it ran on the test seeds, into its own file.
    assert len(ran) == 1 and ran[0][1:3] == ["-m", "action_gen.eval.served"]
    assert f"--seed={bench.TEST_SEED}" in ran[0] and "--episodes=7" in ran[0]
    record = json.loads((row_dir / "benchmark.json").read_text())
    assert record["served_eval_s"] == 60.0
    line = next(x for x in bench.table(args).splitlines() if "behind the server" in x)
    assert "40% [30.0, 70.0]" in line and "10 actions per request" in line and "90 /" in line
    with pytest.raises(cli.UserError, match="image rows only"):
        bench.parse_args([f"--workdir={tmp_path}", "--rows=dp_insertion_state", "--served"])


class FakeOpen:
    @staticmethod
    def config():
        config = type("C", (), {})()
        config.train = type("T", (), {"num_steps": 100})()
        config.data = type("D", (), {"batch_size": 32, "loader": "tfdata"})()
        return config
