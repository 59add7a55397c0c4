"""Fine-tuning an imported openpi checkpoint on a robot's LeRobot data in one command, then
serving it to that robot's client; and the one transform pipeline: the training stream and
the Policy give the model the same inputs (normalized state, tokens, masks, images) for the
same recorded step.

The command is issue #27's, at the tiny size:
  python -m action_gen.main --config=configs/flow_pi0_openpi.py:pi0,robot=aloha,lora,... \\
      --config.train.init_from=DST --config.data.dataset_dir=DIR --workdir=RUN --mode=train
on a LeRobot v3.0 dataset written in the layout of LeRobot's ALOHA datasets
(`observation.images.top` as AV1 video, `observation.state` [14], `action` [14], a task).
"""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from action_gen import checkpoint
from action_gen.data import lerobot_write, rlds, schema
from action_gen.sample.policy import Policy
from action_gen.serve import server
from action_gen.tools import openpi_import
from action_gen.train import loop
from tests.tools import test_openpi_import as helpers

H = helpers.H
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK = "transfer the cube"


def _aloha_episodes(count=3, length=8, seed=0):
    """Bimanual episodes in ALOHA's units: 6 joints (rad) + a gripper in [0, 1] per arm;
    the top camera at 48x64 (resized with padding to the model's 224²)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(count):
        joints = rng.uniform(-1, 1, (length, 2, 6)).cumsum(0) * 0.1
        grip = rng.uniform(0.2, 0.8, (length, 2, 1))
        state = np.concatenate([joints, grip], -1).reshape(length, 14).astype(np.float32)
        frames = rng.integers(0, 256, (length, 48, 64, 3), dtype=np.uint8)
        episodes.append(
            {
                "observation": {"state": state, "image/top": frames},
                "action": (state + rng.normal(0, 0.05, state.shape)).astype(np.float32),
                "language_instruction": TASK if i else "",  # one episode without a task
            }
        )
    return episodes


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """(run dir, imported dir, LeRobot dir): the item-5 command run once."""
    root = tmp_path_factory.mktemp("finetune")
    src = helpers.write_openpi_checkpoint(
        root / "src",
        helpers._model_params(False),
        False,
        value_level=False,
        stats=helpers._openpi_stats(),  # narrower than ALOHA: the fine-tuning data's replace them
    )
    imported = root / "pi0"
    openpi_import.import_checkpoint(
        str(src), str(imported), action_horizon=H, default_prompt="fold the towel"
    )
    data = lerobot_write.write_lerobot_dataset(
        _aloha_episodes(), root / "aloha_sim_transfer_cube_scripted", fps=50, version="v3.0"
    )
    run = root / "run"
    command = [
        sys.executable, "-m", "action_gen.main",
        f"--config={REPO}/configs/flow_pi0_openpi.py:pi0,robot=aloha,lora,variant=tiny,"
        f"horizon={H},steps=2,batch=2",
        f"--config.train.init_from={imported}",
        f"--config.data.dataset_dir={data}",
        "--config.robot.default_prompt=fold the towel",
        f"--workdir={run}",
        "--mode=train",
    ]  # fmt: skip
    # One CPU device (the tests' 8 fake ones would shard a batch of 2), the tests' flags.
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    env = dict(os.environ, XLA_FLAGS=flags)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return run, imported, data


def test_finetuned_lora_run_serves_an_aloha_client(finetuned):
    run, _, _ = finetuned
    manager = checkpoint.create_checkpoint_manager(f"{run}/checkpoints", read_only=True)
    assert manager.latest_step() == 2
    config, stats = checkpoint.restore_metadata(manager)
    assert config["lora"]["rank"] == 16 and config["robot"]["name"] == "aloha"
    # The new data's stats, in the model's space (π joints, delta joints), one dataset.
    (name,) = stats["_datasets"]
    assert name == "aloha" and len(stats["state"]["mean"]) == 14

    policy = Policy.from_checkpoint(str(run), batch_sizes=(1,))
    srv = server.PolicyServer(policy, port=0, max_batch=1, batch_sizes=(1,)).start()
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        rng = np.random.default_rng(0)
        obs = {
            "images": {
                c: rng.integers(0, 256, (3, 480, 640), dtype=np.uint8)
                for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")
            },
            "state": np.concatenate([rng.uniform(-1, 1, 6), [0.5], rng.uniform(-1, 1, 6), [0.4]]),
        }
        reply = client.infer(obs)  # no prompt: the default prompt
        assert reply["actions"].shape == (H, 14) and np.isfinite(reply["actions"]).all()
    finally:
        srv.stop()


def test_training_stream_and_policy_feed_the_model_the_same_inputs(finetuned):
    """One recorded step, read by the training stream (LeRobot → RLDS → tf.data → the
    pipeline) and sent as the ALOHA client's dict (its decoded frame, CHW, at the dataset's
    48x64) to the Policy: identical normalized state, tokens, masks and images."""
    run, _, _ = finetuned
    manager = checkpoint.create_checkpoint_manager(f"{run}/checkpoints", read_only=True)
    stored, stats = checkpoint.restore_metadata(manager)
    config = ml_collections.ConfigDict(stored)
    dirs = loop.existing_dataset_dirs(config, str(run))
    layouts = loop.resolve_layouts(config, dirs)
    batches, transform = loop.create_training_stream(config, dirs, stats, layouts, batch_size=4)
    raw = next(batches)
    train_inputs = transform.inputs(raw)[0]

    policy = Policy.from_checkpoint(str(run))
    episodes = list(rlds.load_rlds_episodes(dirs[0]).as_numpy_iterator())
    for row in range(len(raw[schema.OBS_STATE])):
        state = raw[schema.OBS_STATE][row, -1]
        (where,) = [
            (e, t)
            for e, episode in enumerate(episodes)
            for t in range(len(episode["observation"]["state"]))
            if np.array_equal(episode["observation"]["state"][t], state)
        ]
        frame = episodes[where[0]]["observation"]["image/top"][where[1]]
        request = {"images": {"cam_high": frame.transpose(2, 0, 1)}, "state": state}
        prompt = raw[schema.PROMPT][row].decode()
        if prompt:
            request["prompt"] = prompt
        observation = policy.observation_from_request(request)
        served = policy.prepare_observation(
            {k: np.asarray([v], dtype=object if isinstance(v, str) else None)
             for k, v in observation.items()}
        )  # fmt: skip
        for key in served:
            np.testing.assert_array_equal(served[key][0], train_inputs[key][row], err_msg=key)
        assert set(served) <= set(train_inputs)
