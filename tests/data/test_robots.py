"""Robot adapters (data/robots.py) and their place in the transform pipeline: openpi's ALOHA
conventions pinned against numbers openpi's own code computed, each client's dict read as
openpi's example client sends it, the server-side resize equal to openpi-client's, config
overrides, and the dataset mapping a fine-tuning run reads recordings through."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest
from openpi_client import image_tools

from action_gen import config_schema
from action_gen.data import images, normalize, robots, schema, transforms

FIXTURE = pathlib.Path(__file__).with_name("openpi_aloha_conventions.json")
SIZES = {"base_0_rgb": (224, 224), "left_wrist_0_rgb": (224, 224), "right_wrist_0_rgb": (224, 224)}


@pytest.fixture(scope="module")
def openpi_aloha():
    """openpi's aloha_policy functions on fixed inputs (docs/openpi_reference/
    make_aloha_fixture.py ran them in openpi's venv)."""
    return {k: np.asarray(v) for k, v in json.loads(FIXTURE.read_text()).items()}


def test_aloha_joint_conventions_equal_openpis(openpi_aloha):
    aloha = robots.ROBOTS["aloha"]
    np.testing.assert_allclose(
        aloha.state_to_model(openpi_aloha["states"]), openpi_aloha["decode_state"], rtol=1e-12
    )
    np.testing.assert_allclose(
        aloha.actions_to_model(openpi_aloha["actions"]),
        openpi_aloha["encode_actions_inv"],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        aloha.actions_from_model(openpi_aloha["actions"]),
        openpi_aloha["encode_actions"],
        rtol=1e-12,
    )
    mask = robots.delta_action_mask(aloha.delta_action_dims, 14)
    np.testing.assert_array_equal(mask, openpi_aloha["delta_mask"])
    assert robots.ROBOTS["aloha_sim"].delta_action_dims == ()


def _none_config(robot: str, prompt_max_len: int = 0):
    config = ml_collections.ConfigDict(
        {
            "data": {"state_norm": "none", "action_norm": "none", "obs_horizon": 1,
                     "prompt_max_len": prompt_max_len, "tokenizer": "bytes"},
            "model": {},
            "robot": {"name": robot},
        }
    )  # fmt: skip
    return config_schema.complete(config)


def _identity_stats(state_dim, action_dim):
    one = lambda d: {k: [0.0] * d for k in normalize.STAT_KEYS if k != "count"} | {"count": 1}  # noqa: E731
    return {"state": one(state_dim), "actions": one(action_dim)}


def test_pipeline_delta_and_absolute_equal_openpis(openpi_aloha):
    """robot → delta_actions (inputs) and absolute_actions → robot (outputs) of the ALOHA
    pipeline, without normalization, against openpi's AlohaInputs + DeltaActions and
    AbsoluteActions + AlohaOutputs."""
    pipe = transforms.create_pipeline(_none_config("aloha"), _identity_stats(14, 14))
    batch = {
        schema.OBS_STATE: openpi_aloha["states"][:, None],
        schema.ACTIONS: openpi_aloha["actions"],
    }
    out, context = pipe.inputs(batch)
    decoded = openpi_aloha["decode_state"]
    mask = openpi_aloha["delta_mask"].astype(bool)
    want = openpi_aloha["encode_actions_inv"] - np.where(mask, decoded, 0)[:, None]
    np.testing.assert_allclose(out[schema.ACTIONS], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(context[transforms.CURRENT_STATE], decoded, rtol=1e-12)
    # openpi's outputs: AbsoluteActions in π space, then AlohaOutputs' encoding.
    back = pipe.outputs(want, context)
    absolute = want + np.where(mask, decoded, 0)[:, None]
    flip = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])
    expected = absolute * flip
    expected[..., [6, 13]] = (absolute[..., [6, 13]] + 0.5476 + 0.6213) / (1.4910 + 0.6213)
    np.testing.assert_allclose(back, expected, rtol=1e-5, atol=1e-6)


def test_resize_with_pad_equals_openpi_clients():
    rng = np.random.default_rng(0)
    for h, w in ((480, 640), (200, 300), (224, 224), (100, 100), (300, 120)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(
            images.resize_with_pad(image, 224, 224), image_tools.resize_with_pad(image, 224, 224)
        )


def _img(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_libero_request_hwc_and_the_missing_right_wrist():
    libero = robots.ROBOTS["libero"]
    obs = {
        "observation/image": _img((224, 224, 3)),
        "observation/wrist_image": _img((256, 256, 3), 1),
        "observation/state": np.arange(8.0),
        "prompt": "pick up the bowl",
    }
    out = libero.from_client(obs, SIZES)
    assert out[schema.OBS_STATE].shape == (1, 8) and out[schema.OBS_STATE].dtype == np.float64
    np.testing.assert_array_equal(out[schema.image_key("base_0_rgb")][0], obs["observation/image"])
    np.testing.assert_array_equal(
        out[schema.image_key("left_wrist_0_rgb")][0],
        image_tools.resize_with_pad(obs["observation/wrist_image"], 224, 224),
    )
    assert not out[schema.image_key("right_wrist_0_rgb")].any()
    assert [bool(out[schema.image_mask_key(s)]) for s in SIZES] == [True, True, False]
    assert out[schema.PROMPT] == "pick up the bowl"
    # openpi's _parse_image: CHW and float images are accepted too.
    chw = dict(obs, **{"observation/image": obs["observation/image"].transpose(2, 0, 1)})
    np.testing.assert_array_equal(
        libero.from_client(chw, SIZES)[schema.image_key("base_0_rgb")][0], obs["observation/image"]
    )
    floats = dict(obs, **{"observation/image": obs["observation/image"] / 255.0})
    got = libero.from_client(floats, SIZES)[schema.image_key("base_0_rgb")][0]
    assert np.abs(got.astype(int) - obs["observation/image"]).max() <= 1


def test_aloha_request_nested_chw_cameras():
    aloha = robots.ROBOTS["aloha"]
    high, left = _img((3, 480, 640)), _img((3, 480, 640), 1)
    obs = {"images": {"cam_high": high, "cam_left_wrist": left}, "state": np.zeros(14)}
    out = aloha.from_client(obs, SIZES)
    np.testing.assert_array_equal(
        out[schema.image_key("base_0_rgb")][0],
        image_tools.resize_with_pad(high.transpose(1, 2, 0), 224, 224),
    )
    assert [bool(out[schema.image_mask_key(s)]) for s in SIZES] == [True, True, False]
    assert schema.PROMPT not in out  # the pipeline's prompt stage supplies the default
    with pytest.raises(robots.RobotInputError, match=r"missing \['images/cam_high'\]"):
        aloha.from_client({"images": {"cam_left_wrist": left}, "state": np.zeros(14)}, SIZES)
    with pytest.raises(robots.RobotInputError, match=r"'state' has shape \(8,\)"):
        aloha.from_client({"images": {"cam_high": high}, "state": np.zeros(8)}, SIZES)
    with pytest.raises(robots.RobotInputError, match="'state' has non-finite"):
        aloha.from_client({"images": {"cam_high": high}, "state": np.full(14, np.nan)}, SIZES)
    with pytest.raises(robots.RobotInputError, match="images/cam_high.*3 axes"):
        aloha.from_client({"images": {"cam_high": high[0]}, "state": np.zeros(14)}, SIZES)


def test_droid_state_parts_are_concatenated_in_order():
    droid = robots.ROBOTS["droid"]
    obs = {
        "observation/exterior_image_1_left": _img((224, 224, 3)),
        "observation/wrist_image_left": _img((224, 224, 3), 1),
        "observation/joint_position": np.arange(7.0),
        "observation/gripper_position": np.float64(0.5),  # a scalar counts as [1]
        "prompt": b"wipe the table",
    }
    out = droid.from_client(obs, SIZES)
    np.testing.assert_array_equal(out[schema.OBS_STATE][0], [*range(7), 0.5])
    assert out[schema.PROMPT] == "wipe the table"
    with pytest.raises(robots.RobotInputError, match="observation/joint_position"):
        droid.from_client({k: v for k, v in obs.items() if "joint" not in k}, SIZES)


def test_config_overrides_and_robots_of_your_own():
    robots_config = {"name": "libero", "delta_action_dims": ""}
    assert robots.from_config(ml_collections.ConfigDict(robots_config)) == robots.ROBOTS["libero"]
    assert robots.from_config({"name": ""}) is None and robots.from_config(None) is None
    delta = robots.from_config(dict(robots_config, delta_action_dims="6,-1"))
    np.testing.assert_array_equal(
        robots.delta_action_mask(delta.delta_action_dims, 7), [1] * 6 + [0]
    )
    assert (
        robots.from_config({"name": "aloha", "delta_action_dims": "none"}).delta_action_dims == ()
    )
    mine = robots.from_config(
        {
            "name": "my_arm",
            "cameras": "base_0_rgb=cam/front",
            "state": "joints,gripper",
            "state_dims": "6,1",
            "action_dim": 7,
            "dataset": "cam/front=observation/image/front,joints=observation/joints",
        }
    )
    assert mine.state_dim == 7 and mine.cameras == {"base_0_rgb": "cam/front"}
    assert mine.dataset["cam/front"] == ("observation/image/front",)
    with pytest.raises(ValueError, match="needs config.robot.cameras"):
        robots.from_config({"name": "my_arm", "action_dim": 7})
    with pytest.raises(ValueError, match="unknown field.*'camera'"):
        robots.from_config({"name": "libero", "camera": "x"})
    with pytest.raises(ValueError, match="joints must be one of"):
        robots.from_config({"name": "libero", "joints": "franka"})
    with pytest.raises(ValueError, match="covers 14 dims, more than the 7-d action"):
        robots.from_config({"name": "libero", "delta_action_dims": "6,-1,6,-1"})


def test_dataset_mapping_finds_the_robots_recordings():
    described = {
        "observation/image/top": ((48, 64, 3), "uint8", "image"),
        "observation/state": ((14,), "float32", "tensor"),
        "action": ((14,), "float32", "tensor"),
        "language_instruction": ((), "string", "text"),
    }
    mapping = robots.ROBOTS["aloha"].dataset_mapping(described)
    assert mapping == {
        "cameras": {"base_0_rgb": "observation/image/top"},
        "state": ["observation/state"],
        "action": ["action"],
        "instruction": ["language_instruction"],
    }
    renamed = dict(described)
    renamed["act"] = renamed.pop("action")
    with pytest.raises(robots.RobotInputError, match="'actions'.*--config.robot.dataset"):
        robots.ROBOTS["aloha"].dataset_mapping(renamed)
    mapping = robots.ROBOTS["aloha"].dataset_mapping(renamed, "actions=act")
    assert mapping["action"] == ["act"]
