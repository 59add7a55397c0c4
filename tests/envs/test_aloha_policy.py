"""ALOHA end to end at smoke size: scripted demos → LeRobot dataset (envs.collect) → the
data step's conversion → a few training steps (configs/{diffusion,flow}_unet_aloha.py) →
one evaluation episode in the simulator, through the commands a user runs.

Subprocesses: the simulator's EGL renderer and TensorFlow cannot share a process
(envs/aloha.py), and each command is what the README's ALOHA row runs.
"""

import json
import os
import subprocess
import sys

import pytest

from action_gen.envs import aloha
from action_gen.sample import executor
from configs import diffusion_unet_aloha

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_state_policy_trains_and_evaluates_from_scripted_demos(tmp_path):
    demos = tmp_path / "demos"
    _run(
        ["action_gen.envs.collect", "--env=aloha_transfer_cube", "--episodes=2",
         "--image=none", "--environment_state", f"--out={demos}"]
    )  # fmt: skip
    config = diffusion_unet_aloha.get_config(f"smoke,demos={demos}")
    assert os.path.isdir(config.data.dataset_dir), "the config reads what collect wrote"
    workdir = tmp_path / "run"
    _run(
        ["action_gen.main",
         f"--config=configs/diffusion_unet_aloha.py:smoke,ensemble,demos={demos}",
         f"--workdir={workdir}", "--mode=train_and_eval"]
    )  # fmt: skip
    results = json.loads((workdir / "results.json").read_text())
    assert results["env"] == "aloha_transfer_cube+env_state"
    assert results["episodes"] == 1 and results["mean_episode_length"] == 24
    # Where the episode got to (the evaluation's stage breakdown) is reported.
    assert {f"stage_{k}_rate" for k in range(1, aloha.MAX_REWARD + 1)} <= set(results)
    assert results["eval_seed_split"] == "dev"
    # Evaluated with ACT's temporal ensembling (a chunk every step), as the config asked.
    assert results["temporal_ensemble_decay"] == executor.ACT_DECAY
    assert results["action_exec_horizon"] == 1


def test_config_variants_and_errors():
    image = diffusion_unet_aloha.get_config("task=insertion,image=96x128,chunk=32")
    assert image.eval.env == "aloha_insertion@top:96x128"
    assert image.data.dataset_dir.endswith("aloha_sim_insertion_scripted_top96x128")
    assert dict(image.data.cameras) == {"top": [96, 128]}
    assert image.data.action_horizon == 32 and image.eval.action_exec_horizon == 16
    state = diffusion_unet_aloha.get_config("")
    assert state.eval.env == "aloha_transfer_cube+env_state"
    # The config names env specs and dataset directories without importing the simulator
    # code (configs' import rule); they must be envs.aloha's.
    for arg in ("", "task=insertion", "image", "task=insertion,image=480x640", "image=48x64"):
        config = diffusion_unet_aloha.get_config(arg)
        spec = config.eval.env
        parsed = aloha.parse_spec(spec)
        assert aloha.make_spec(**parsed) == spec
        assert config.data.dataset_dir.endswith("/" + aloha.dataset_name(spec)), arg
    assert diffusion_unet_aloha.get_config("image").data.cameras.top == [240, 320]
    ensemble = diffusion_unet_aloha.get_config("chunk=100,ensemble")
    assert ensemble.data.action_horizon == 100 and ensemble.eval.action_exec_horizon == 1
    assert ensemble.eval.temporal_ensemble_decay == executor.ACT_DECAY
    assert state.eval.temporal_ensemble_decay is None  # receding horizon by default
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        diffusion_unet_aloha.get_config("image=240")
    with pytest.raises(ValueError, match="multiple of 4"):
        diffusion_unet_aloha.get_config("chunk=10")
    with pytest.raises(ValueError, match="ALOHA tasks are"):
        diffusion_unet_aloha.get_config("task=pick")
    with pytest.raises(ValueError, match="one of state, image"):
        diffusion_unet_aloha.get_config("state,image=96x128")
