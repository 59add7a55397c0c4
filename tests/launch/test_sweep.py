"""launch/sweep.py: sweep expansion, train-once grouping, job scripts, result collection."""

import csv
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABLATION = os.path.join(REPO, "configs", "ablation_obstacle.py")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load(os.path.join(REPO, "launch", "sweep.py"), "sweep_under_test")


def _flag(command, name):
    values = [c.split("=", 1)[1] for c in command if c.startswith(f"--{name}=")]
    assert len(values) <= 1
    return values[0] if values else None


def test_ablation_sweep_expands_and_trains_each_model_once(tmp_path):
    runs = sweep.load_sweep(ABLATION, "runlocal")
    names = [r["name"] for r in runs]
    assert names == [
        "regression",
        "tokens_greedy",
        "tokens_t1",
        "diffusion_ddim1",
        "diffusion_ddim3",
        "diffusion_ddim10",
        "diffusion_ddpm100",
        "flow_euler1",
        "flow_euler3",
        "flow_euler10",
    ]
    plan = sweep.plan(ABLATION, "runlocal", runs, str(tmp_path), python="python")
    # 10 runs, 4 trained models: the samplers / step counts / temperatures share one.
    assert [t["name"] for t in plan["trains"]] == [
        "regression",
        "tokens_greedy",
        "diffusion_ddim1",
        "flow_euler1",
    ]
    groups = {e["name"]: e["train_group"] for e in plan["evals"]}
    assert groups["diffusion_ddpm100"] == groups["diffusion_ddim10"] == "diffusion_ddim1"
    assert groups["tokens_t1"] == "tokens_greedy"
    trains = {t["name"]: t for t in plan["trains"]}
    for train in plan["trains"]:
        command = train["command"]
        assert command[:3] == ["python", "-m", "action_gen.main"]
        assert _flag(command, "mode") == "train"
        assert _flag(command, "config.data.dataset_dir") == plan["dataset_dir"]
        # Inference knobs never reach a training command.
        assert not any(
            sweep.is_inference_key(c[len("--config.") :].split("=")[0])
            for c in command
            if c.startswith("--config.")
        )
    ddpm = next(e for e in plan["evals"] if e["name"] == "diffusion_ddpm100")
    assert _flag(ddpm["command"], "config") == f"{ABLATION}:runlocal,objective=diffusion"
    assert _flag(ddpm["command"], "config.objective.sampler") == "ddpm"
    assert _flag(ddpm["command"], "config.objective.num_sample_steps") == "100"
    assert _flag(ddpm["command"], "eval_checkpoint") == trains["diffusion_ddim1"]["dir"]
    assert _flag(ddpm["command"], "workdir") == os.path.join(
        str(tmp_path), "runs", "diffusion_ddpm100"
    )

    sweep.write_command_files(plan)
    text = open(os.path.join(ddpm["dir"], "command.sh")).read()
    assert "--eval_checkpoint=" in text and "action_gen.main" in text  # eval + its training


def test_ablation_configs_build_every_objective():
    from action_gen import objectives  # noqa: PLC0415

    config_module = _load(ABLATION, "ablation_under_test")
    for objective in config_module.OBJECTIVES:
        config = config_module.get_config(f"runlocal,objective={objective}")
        assert config.objective.name == objective
        objectives.create_objective(config.objective, (16, 2))
    tokens = config_module.get_config("demo,objective=tokens")
    assert tokens.model.name == "token_head" and tokens.model.num_bins == 256
    assert tokens.objective.num_bins == 256
    # eval and objective step counts stay linked after the objective section is replaced.
    tokens.objective.num_sample_steps = 7
    assert tokens.eval.num_sample_steps == 7
    with pytest.raises(ValueError, match="ablation_obstacle.py: unknown objective"):
        config_module.get_config("runlocal,objective=nope")


def test_load_sweep_rejects_bad_entries(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_sweep(arg=None):\n    return [{'name': 'a'}, {'name': 'a'}]\n")
    with pytest.raises(ValueError, match="names repeat"):
        sweep.load_sweep(str(path), None)
    path.write_text("def get_sweep(arg=None):\n    return [{'objective.eta': 1.0}]\n")
    with pytest.raises(ValueError, match="needs a 'name'"):
        sweep.load_sweep(str(path), None)
    path.write_text("def get_config(arg=None):\n    return None\n")
    with pytest.raises(ValueError, match="no get_sweep"):
        sweep.load_sweep(str(path), None)


def _fake_plan(tmp_path):
    runs = [
        {"name": "diff_a", "objective.num_sample_steps": 1},
        {"name": "diff_b", "objective.num_sample_steps": 10},
        {"name": "reg", "seed": 1, "model.down_dims": (8, 16)},
    ]
    return sweep.plan(ABLATION, "runlocal", runs, str(tmp_path), python="python")


def test_collect_results_writes_md_csv_png(tmp_path):
    plan = _fake_plan(tmp_path)
    assert [t["name"] for t in plan["trains"]] == ["diff_a", "reg"]
    fake = {
        "diff_a": dict(
            success_rate=0.9,
            collision_rate=0.1,
            mode_left_fraction=0.4,
            mode_right_fraction=0.5,
            action_jerk=0.25,
            policy_call_ms=12.0,
            chunk_latency_ms=3.5,
            episodes=10,
            objective="diffusion",
            sampler="ddim",
            num_sample_steps=1,
        ),
        "diff_b": dict(
            success_rate=1.0,
            collision_rate=0.0,
            mode_left_fraction=0.5,
            mode_right_fraction=0.5,
            action_jerk=0.125,
            policy_call_ms=40.0,
            chunk_latency_ms=11.0,
            episodes=10,
            objective="diffusion",
            sampler="ddim",
            num_sample_steps=10,
            quantization_error_raw=None,
        ),
    }
    for job in plan["evals"]:
        os.makedirs(job["dir"], exist_ok=True)
        if job["name"] in fake:
            with open(os.path.join(job["dir"], "results.json"), "w") as f:
                json.dump(fake[job["name"]], f)
            with open(os.path.join(job["dir"], "job.json"), "w") as f:
                json.dump({"seconds": 5.0, "returncode": 0}, f)
        else:
            with open(os.path.join(job["dir"], "job.json"), "w") as f:
                json.dump({"seconds": 1.0, "returncode": 3}, f)
    os.makedirs(plan["trains"][0]["dir"], exist_ok=True)
    with open(os.path.join(plan["trains"][0]["dir"], "job.json"), "w") as f:
        json.dump({"seconds": 100.0, "returncode": 0}, f)

    rows = sweep.collect_results(str(tmp_path), plan)
    assert [r["method"] for r in rows] == ["diff_a", "diff_b", "reg"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]

    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["diff_a", "diff_b", "reg"]
    assert table[0]["success_rate"] == "0.9" and table[0]["train_seconds"] == "100.0"
    assert table[1]["train_group"] == "diff_a" and table[2]["success_rate"] == ""

    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | success | collisions | left | right | jerk |")
    assert md[2].startswith("| diff_a | 90% | 10% | 40% | 50% | 2.50e-01 |")
    assert "| 3.5 |" in md[2] and md[4].endswith("| failed |")
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_emitted_slurm_scripts(tmp_path):
    plan = _fake_plan(tmp_path)
    submit = sweep.emit_job_scripts(plan, str(tmp_path), "slurm", ["python", "-m", "collect"])
    jobs = tmp_path / "jobs"
    train = (jobs / "train_diff_a.sbatch").read_text()
    assert train.startswith("#!/bin/bash\n#SBATCH --job-name=train_diff_a\n")
    assert f"#SBATCH --output={plan['trains'][0]['dir']}/slurm-%j.out" in train
    assert "#SBATCH --nodes=1" in train and "#SBATCH --ntasks-per-node=1" in train
    assert "srun python -m action_gen.main --config=" in train and "--mode=train" in train
    evaluation = (jobs / "eval_diff_b.sbatch").read_text()
    assert "--eval_checkpoint=" + plan["trains"][0]["dir"] in evaluation
    lines = open(submit).read().splitlines()
    assert "python -m collect" in lines[3]  # the dataset, once, before any job
    assert "train_diff_a=$(sbatch --parsable" in lines[4]
    assert any(
        line.startswith("sbatch --dependency=afterok:${train_diff_a} ")
        and line.endswith("eval_diff_b.sbatch")
        for line in lines
    )
    assert os.access(submit, os.X_OK)


def test_emitted_tpu_scripts(tmp_path):
    plan = _fake_plan(tmp_path)
    sweep.emit_job_scripts(plan, str(tmp_path), "tpu", None)
    text = (tmp_path / "jobs" / "train_reg.sh").read_text()
    assert 'gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all' in text
    assert "--config.model.down_dims=(8,16)" in text


def test_shared_checkpoint_refuses_only_what_a_checkpoint_fixes():
    """Runs that share a trained checkpoint differ only in inference keys; the eval mode's
    refusal (Policy.from_checkpoint(config=...)) uses the checkpoint's one definition of
    the fields it fixes, so the two can never disagree."""
    from action_gen import compat

    for key in sweep.INFERENCE_KEYS | {"eval.num_episodes"}:
        assert sweep.is_inference_key(key) and not compat.fixed_for_resume(key)
    stored = {
        "model": {"name": "unet1d"},
        "objective": {"sampler": "ddim", "schedule": "a"},
        "data": {"obs_horizon": 2, "action_norm": "minmax"},
        "eval": {"num_episodes": 4},
    }
    current = {
        "model": {"name": "unet1d"},
        "objective": {"sampler": "ddpm", "schedule": "b"},
        "data": {"obs_horizon": 2, "action_norm": "meanstd"},
        "eval": {"num_episodes": 100},
    }
    with pytest.raises(ValueError, match="objective.schedule") as error:
        compat.check_resume(stored, current, "/ckpt", "")
    assert "data.action_norm" in str(error.value) and "sampler" not in str(error.value)


def test_run_jobs_records_exit_codes(tmp_path):
    jobs = [
        {"name": "ok", "dir": str(tmp_path / "ok"), "command": ["python3", "-c", "print('hi')"]},
        {"name": "bad", "dir": str(tmp_path / "bad"), "command": ["python3", "-c", "exit(3)"]},
    ]
    codes = sweep.run_jobs(jobs, parallel=2)
    assert codes == {"ok": 0, "bad": 3}
    assert (tmp_path / "ok" / "log.txt").read_text() == "hi\n"
    assert json.loads((tmp_path / "bad" / "job.json").read_text())["returncode"] == 3


def test_run_jobs_waits_for_and_skips_on_dependencies(tmp_path):
    def job(name, code, after=None):
        stamp = tmp_path / f"{name}.stamp"
        command = [
            "python3",
            "-c",
            f"import time; open({str(stamp)!r}, 'w').write(str(time.time())); exit({code})",
        ]
        return {"name": name, "dir": str(tmp_path / name), "command": command, "after": after}

    jobs = [
        job("train_a", 0),
        job("train_b", 1),
        job("eval_a", 0, after="train_a"),
        job("eval_b", 0, after="train_b"),
    ]
    codes = sweep.run_jobs(jobs, parallel=4)
    assert codes == {"train_a": 0, "train_b": 1, "eval_a": 0, "eval_b": None}
    assert not (tmp_path / "eval_b.stamp").exists()
    assert float((tmp_path / "eval_a.stamp").read_text()) >= float(
        (tmp_path / "train_a.stamp").read_text()
    )
    with pytest.raises(ValueError, match="unknown dependencies"):
        sweep.run_jobs([job("orphan", 0, after="nope")], parallel=1)
