"""The served ALOHA row (eval/served.py): openpi's ALOHA-sim client dict, its geometry against
what the model trained on, and an image policy trained for that client, served by
`main --mode=serve` and evaluated through openpi_client's own classes.

Subprocesses: the simulator's EGL renderer and TensorFlow cannot share a process
(envs/aloha.py); the served evaluation is the command a user runs.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from action_gen.data import images, lerobot_write
from action_gen.envs import aloha
from action_gen.eval import served
from configs import diffusion_unet_aloha
from tests.envs.test_aloha_policy import REPO
from tests.envs.test_aloha_policy import _run as run_module


def _scene(height, width):
    """A smooth synthetic frame with a bright square (a 'cube') at a fixed place in the
    scene, rendered at height x width (what a camera at that resolution would see)."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    frame = np.stack([80 + 100 * x, 60 + 120 * y, 90 + 60 * x * y], -1)
    cube = (np.abs(y - 0.6) < 0.08) & (np.abs(x - 0.3) < 0.06)
    frame[cube] = (230, 30, 30)
    return frame.astype(np.uint8)


def test_client_observation_is_openpi_aloha_sim_dict():
    state = np.linspace(-1, 1, 14)
    obs = served.client_observation(_scene(480, 640), state)
    assert set(obs) == {"state", "images"} and set(obs["images"]) == {"cam_high"}
    image = obs["images"]["cam_high"]
    assert image.shape == (3, 224, 224) and image.dtype == np.uint8
    np.testing.assert_array_equal(obs["state"], state)
    # resize_with_pad letterboxes 480x640 into 224x224: 168 content rows, 28 black above
    # and below.
    hwc = np.transpose(image, (1, 2, 0))
    assert hwc[:28].max() == 0 and hwc[196:].max() == 0
    assert hwc[28:196].min(axis=(0, 1)).max() > 0


def test_the_client_frame_reaches_the_model_as_the_recording_did():
    """The `openpi_client` variant letterboxes a 96x128 recording into 128x128 in training;
    the server letterboxes the client's 224x224 (itself 480x640 letterboxed) into the same
    128x128: the same geometry, black rows in the same places, the same content."""
    config = diffusion_unet_aloha.get_config("image=96x128,openpi_client")
    side = config.data.cameras.top
    assert list(side) == [128, 128]
    trained = images.resize_with_pad(_scene(96, 128), *side)
    client = np.transpose(served.client_observation(_scene(480, 640), np.zeros(14))["images"][
        "cam_high"], (1, 2, 0))  # fmt: skip
    received = images.resize_with_pad(client, *side)
    black_trained = np.flatnonzero(trained.max(axis=(1, 2)) == 0)
    np.testing.assert_array_equal(black_trained, [*range(16), *range(112, 128)])
    # The received frame: black in the same rows but the one at each edge of the content,
    # which the client's antialiased shrink blends with the bars.
    assert received[:15].max() == 0 and received[113:].max() == 0
    assert received[15].mean() < received[16:112].mean() / 2
    diff = np.abs(trained[16:112].astype(int) - received[16:112].astype(int))
    assert diff.mean() < 2.0, diff.mean()  # 0.88 gray levels

    # The cube is where it was: the brightest-red pixels' centroid agrees to a pixel.
    def red_centroid(frame):
        mask = (frame[..., 0] > 180) & (frame[..., 1] < 90)
        return np.argwhere(mask).mean(axis=0)

    np.testing.assert_allclose(red_centroid(trained), red_centroid(received), atol=1.0)


def test_openpi_client_variant_config():
    config = diffusion_unet_aloha.get_config("image=96x128,cpu,openpi_client")
    assert config.robot.name == "aloha_sim_client"
    assert config.robot.cameras == "top=images/cam_high" and config.robot.joints == "none"
    assert config.eval.env == "aloha_transfer_cube@top:96x128"  # the recording's size
    assert list(config.data.image_crop) == [112, 112] == list(config.model.image_crop)
    with pytest.raises(ValueError, match="openpi_client serves an image policy"):
        diffusion_unet_aloha.get_config("state,openpi_client")


def _write_image_demos(root, size=(48, 64), episodes=2, length=40):
    """A LeRobot dataset in the layout envs.collect writes for `image=HxW` (random smooth
    joint trajectories, synthetic frames): enough for a few training steps."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(episodes):
        state = np.cumsum(rng.normal(0, 0.01, (length, aloha.ACTION_DIM)), axis=0)
        frames = np.repeat(_scene(*size)[None], length, axis=0)
        out.append({
            "observation": {"state": state.astype(np.float32), "image/top": frames},
            "action": np.roll(state, -1, axis=0).astype(np.float32),
            "language_instruction": aloha.TASKS["transfer_cube"].instruction,
        })  # fmt: skip
    name = diffusion_unet_aloha.dataset_name("transfer_cube", size)
    lerobot_write.write_lerobot_dataset(out, root / name, fps=aloha.FPS, robot_type="aloha")


@pytest.mark.slow
def test_image_policy_is_served_to_openpi_aloha_sim_client(tmp_path):
    demos = tmp_path / "demos"
    _write_image_demos(demos)
    workdir = tmp_path / "run"
    run_module(
        ["action_gen.main",
         f"--config=configs/diffusion_unet_aloha.py:image=48x64,smoke,openpi_client,demos={demos}",
         f"--workdir={workdir}", "--mode=train_and_eval"]
    )  # fmt: skip
    # In process, the simulator's 48x64 frames were letterboxed into the model's 64x64.
    in_process = json.loads((workdir / "results.json").read_text())
    assert in_process["env"] == "aloha_transfer_cube@top:48x64" and in_process["episodes"] == 1
    # Behind the server: openpi_client's WebsocketClientPolicy + ActionChunkBroker, two
    # clients at once, the 480x640 frame sent as openpi's ALOHA-sim client sends it.
    out = tmp_path / "served.json"
    run_module(
        ["action_gen.eval.served", f"--workdir={workdir}", "--episodes=2", "--clients=2",
         "--max_steps=6", "--action_horizon=4", f"--out={out}"]
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert results["episodes"] == 2 and results["mean_episode_length"] == 6
    assert results["task"] == "transfer_cube" and results["eval_seed_split"] == "dev"
    assert {f"stage_{k}_rate" for k in range(1, aloha.MAX_REWARD + 1)} <= set(results)
    # 6 steps at 4 actions per request: 2 requests per episode, each timed at the client.
    assert results["policy_call_ms"] > 0 and results["action_horizon"] == 4
    assert 0.0 <= results["success_ci95_low"] <= results["success_ci95_high"] <= 1.0
    assert (tmp_path / "served.server.log").exists()


def test_a_run_without_an_aloha_env_is_refused(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "action_gen.eval.served", f"--workdir={tmp_path / 'nothing'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "nothing" in run.stderr and "Traceback" not in run.stderr
