"""An openpi checkpoint imported for a robot (`openpi_import --robot=...`) answers the dict
that robot's openpi example client sends, through our server and the real openpi-client:
LIBERO (flat keys, HWC), ALOHA (nested `images`, CHW, no prompt → the default prompt),
ALOHA sim and DROID (state parts). `Policy.infer(obs, noise=n)` is deterministic in n;
malformed requests get an error naming the key and the connection keeps serving.

(Equality with openpi's own `Policy.infer` needs openpi's code: BUILD_NOTES.md, issue #27,
has the figures of `openpi_import --compare` on references made with it.)
"""

import functools

import jax
import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from action_gen.sample.policy import Policy
from action_gen.serve import server
from action_gen.tools import openpi_import
from tests.tools import test_openpi_import as helpers

H = helpers.H
WIDE = 32  # openpi's stats are often stored at the padded width: sliced per robot


def _stats(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def one(d):
        return {
            "mean": rng.normal(size=d).tolist(),
            "std": rng.uniform(0.5, 2, d).tolist(),
            "q01": rng.uniform(-3, -1, d).tolist(),
            "q99": rng.uniform(1, 3, d).tolist(),
        }

    return {"state": one(WIDE), "actions": one(WIDE)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny π0 in openpi's released layout, stats for every robot (32 wide)."""
    root = tmp_path_factory.mktemp("robots")
    return helpers.write_openpi_checkpoint(
        root / "src", helpers._model_params(False), False, value_level=False, stats=_stats()
    )


@functools.cache
def _policy(src: str, robot: str, default_prompt: str | None) -> Policy:
    workdir = f"{src}_{robot}"
    summary = openpi_import.import_checkpoint(
        src, workdir, action_horizon=H, robot=robot, default_prompt=default_prompt
    )
    assert summary["robot"] == robot and summary["serve"].endswith(workdir)
    return Policy.from_checkpoint(workdir, batch_sizes=(1,))


def _img(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def client_dict(robot: str, seed: int = 0) -> dict:
    """What openpi's example client for `robot` sends (examples/{libero,aloha_real,
    aloha_sim,droid})."""
    rng = np.random.default_rng(seed)
    if robot == "libero":
        return {
            "observation/image": _img((224, 224, 3), seed),
            "observation/wrist_image": _img((224, 224, 3), seed + 1),
            "observation/state": rng.normal(size=8),
            "prompt": "put the bowl on the plate",
        }
    if robot == "aloha":
        cams = ("cam_high", "cam_left_wrist", "cam_right_wrist")
        state = np.concatenate([rng.uniform(-1, 1, 6), [0.5], rng.uniform(-1, 1, 6), [0.3]])
        return {"images": {c: _img((3, 480, 640), seed + i) for i, c in enumerate(cams)},
                "state": state}  # fmt: skip
    if robot == "aloha_sim":
        state = np.concatenate([rng.uniform(-1, 1, 6), [0.5], rng.uniform(-1, 1, 6), [0.3]])
        return {"images": {"cam_high": _img((3, 224, 224), seed)}, "state": state}
    return {
        "observation/exterior_image_1_left": _img((224, 224, 3), seed),
        "observation/wrist_image_left": _img((224, 224, 3), seed + 1),
        "observation/joint_position": rng.normal(size=7),
        "observation/gripper_position": rng.uniform(0, 1, 1),
        "prompt": "wipe the table",
    }


WIDTH = {"libero": 7, "aloha": 14, "aloha_sim": 14, "droid": 8}
PROMPTS = {"aloha": "fold the towel", "aloha_sim": "Transfer cube"}


@pytest.mark.parametrize("robot", ["libero", "aloha", "aloha_sim", "droid"])
def test_openpi_client_is_served_its_robots_dict(source, robot):
    policy = _policy(str(source), robot, PROMPTS.get(robot))
    srv = server.PolicyServer(policy, port=0, max_batch=1, batch_sizes=(1,)).start()
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        meta = client.get_server_metadata()
        assert meta["robot"] == robot and meta["action_shape"] == [H, WIDTH[robot]]
        obs = client_dict(robot)
        reply = client.infer(obs)
        assert reply["actions"].shape == (H, WIDTH[robot])
        # The server's first call samples with fold_in(key(0), 0): the same chunk infer gives.
        want = policy.infer(obs, rng=jax.random.fold_in(jax.random.key(0), 0))["actions"]
        np.testing.assert_allclose(reply["actions"], want, rtol=1e-6, atol=1e-6)
        # A malformed request is answered with the key's name; the connection keeps serving.
        bad = dict(obs)
        bad.pop(next(iter(policy.robot.state)))
        with pytest.raises(RuntimeError, match=next(iter(policy.robot.state))):
            client.infer(bad)
        assert client.infer(client_dict(robot, seed=1))["actions"].shape == (H, WIDTH[robot])
    finally:
        srv.stop()


def test_infer_is_deterministic_in_the_noise_and_uses_the_default_prompt(source):
    policy = _policy(str(source), "aloha", "fold the towel")
    obs = client_dict("aloha", seed=3)
    noise = np.random.default_rng(0).normal(size=(H, 32)).astype(np.float32)
    first = policy.infer(obs, noise=noise)["actions"]
    np.testing.assert_array_equal(first, policy.infer(obs, noise=noise)["actions"])
    assert not np.allclose(first, policy.infer(obs, noise=noise + 1.0)["actions"])
    # No prompt in ALOHA's dict: the default prompt is the instruction.
    with_prompt = policy.infer(dict(obs, prompt="fold the towel"), noise=noise)["actions"]
    np.testing.assert_array_equal(first, with_prompt)
    other = policy.infer(dict(obs, prompt="open the drawer"), noise=noise)["actions"]
    assert not np.allclose(first, other)
    with pytest.raises(ValueError, match=r"noise has shape \(1, 4, 7\)"):
        policy.infer(obs, noise=noise[:, :7])


def test_a_robot_without_a_default_prompt_needs_one(source):
    policy = _policy(str(source), "droid", None)
    obs = client_dict("droid")
    del obs["prompt"]
    with pytest.raises(ValueError, match="no 'prompt' and the policy has no default prompt"):
        policy.infer(obs)
