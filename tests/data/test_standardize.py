"""Standardization of real RLDS layouts: every shipped mapping on a dataset with its real
key structure, checked against numpy on the raw episodes; conventions, errors, inspect."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from action_gen.data import inspect as inspect_cli
from action_gen.data import rlds, standardize, validate
from tests.data import oxe_fixtures
from tests.data.oxe_fixtures import LENGTHS, episodes_of, write_layout

SIZE = (16, 16)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxe")
    for name in oxe_fixtures.LAYOUTS:
        write_layout(name, root)
    return root


def _wrap(x):
    return np.arctan2(np.sin(x), np.cos(x))


def _expected(name, ep):
    """(state, action, instruction, {slot: present}) by hand, from one raw episode."""
    obs, act = ep["observation"], ep["action"]
    if name == "fractal20220817_data":
        state = np.concatenate([obs["base_pose_tool_reached"], obs["gripper_closed"]], -1)
        closedness = act["gripper_closedness_action"][:, 0]
        gripper = np.where(np.arange(len(closedness)) < 1, 1.0, 0.0)
        gripper[4:] = 1.0  # closed at step 1, opened at step 4; open before the first close
        rot = _wrap(act["rotation_delta"])
        action = np.concatenate([act["world_vector"], rot, gripper[:, None]], -1)
        return state, action, "pick coke can", {"primary": True}
    if name == "bridge":
        state = obs["state"].copy()
        state[:, 3:6] = _wrap(state[:, 3:6])
        action = np.concatenate(
            [act["world_vector"], _wrap(act["rotation_delta"]), act["open_gripper"][:, None]], -1
        )
        text = str(obs["natural_language_instruction"][0])
        return state[1:], action[1:], text, {"primary": True}  # first (zero) step trimmed
    if name == "bridge_dataset":
        state = obs["state"].copy()
        state[:, 3:6] = _wrap(state[:, 3:6])
        action = act.copy()
        action[:, 3:6] = _wrap(action[:, 3:6])
        meta = ep["episode_metadata"]
        masks = {"primary": meta["has_image_0"], "secondary": meta["has_image_1"], "wrist": False}
        return state, action, "sweep", masks
    if name == "taco_play":
        robot = obs["robot_obs"]
        state = np.concatenate([robot[:, 0:3], _wrap(robot[:, 3:6]), robot[:, 7:8]], -1)
        action = act["rel_actions_world"].copy()
        action[:, 3:6] = _wrap(action[:, 3:6])
        action[:, 6] = (action[:, 6] + 1) / 2
        return state, action, "open the drawer", {"primary": True, "wrist": True}
    if name == "libero_10_no_noops":
        action = act.copy()
        action[:, 6] = (1 - action[:, 6]) / 2
        return obs["state"], action, ep["language_instruction"], {"primary": True, "wrist": True}
    if name == "droid":
        state = np.concatenate([obs["cartesian_position"], obs["gripper_position"]], -1)
        parts = ep["step_fields"]["action_dict"]
        action = np.concatenate([parts["cartesian_velocity"], 1 - parts["gripper_position"]], -1)
        text = ep["language_instruction"] or "wipe the table with the towel"
        slots = {"primary": True, "secondary": True, "wrist": True}
        return state, action, text, slots
    if name == "aloha":
        slots = {"primary": True, "left_wrist": True, "right_wrist": True}
        return obs["state"], act, "insert the peg", slots
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(oxe_fixtures.LAYOUTS))
def test_shipped_mapping_standardizes_the_real_layout(root, name):
    directory = os.path.join(root, oxe_fixtures.LAYOUTS[name][2])
    (mapping,) = standardize.resolve_mappings([name], [directory])
    builder = rlds.load_builder(directory)
    assert builder.info.name == oxe_fixtures.LAYOUTS[name][1]  # the TFDS name inside
    described = standardize.describe_features(builder.info.features)
    cameras = {slot: SIZE for slot in mapping["cameras"]}
    fn, keep = standardize.make_standardizer(mapping, described, cameras=cameras, image_masks=True)
    episodes = rlds.load_rlds_episodes(directory).map(fn)
    for ep, traj in zip(episodes_of(name), episodes.as_numpy_iterator(), strict=True):
        state, action, text, masks = _expected(name, ep)
        np.testing.assert_allclose(traj["observation"]["state"], state, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(traj["action"], action, rtol=1e-6, atol=1e-6)
        assert (
            traj["action"].dtype == np.float32 and traj["observation"]["state"].dtype == np.float32
        )
        assert {t.decode() for t in traj["language_instruction"]} == {text}
        for slot, present in masks.items():
            frames = traj["observation"][f"image/{slot}"]
            assert frames.shape == (len(action), *SIZE, 3) and frames.dtype == np.uint8
            assert traj["image_mask"][slot].tolist() == [bool(present)] * len(action)
        assert sorted(traj["image_mask"]) == sorted(masks)
        assert bool(keep(tf.nest.map_structure(tf.constant, traj)))


def test_gripper_conventions_map_to_one_open_is_1():
    cases = {
        "open_01": ([0.0, 1.0, 0.25], [0.0, 1.0, 0.25]),
        "closed_01": ([0.0, 1.0, 0.25], [1.0, 0.0, 0.75]),
        "open_pm1": ([-1.0, 1.0, 0.0], [0.0, 1.0, 0.5]),
        "closed_pm1": ([-1.0, 1.0, 0.0], [1.0, 0.0, 0.5]),
        "open_bool": ([False, True, True], [0.0, 1.0, 1.0]),
        "open_0_100": ([0.0, 100.0, 50.0], [0.0, 1.0, 0.5]),
        "closed_0_100": ([0.0, 100.0, 50.0], [1.0, 0.0, 0.5]),
        # relative: keep, close, keep, open, keep; open before the first command (a close)
        "relative_close_pm1": ([0.0, 1.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 1.0, 1.0]),
    }
    assert set(cases) == set(standardize.GRIPPER_CONVENTIONS)
    for convention, (x, want) in cases.items():
        got = standardize.convert_gripper(tf.constant(x), convention).numpy()
        np.testing.assert_allclose(got, want, err_msg=convention)
    # A first command that opens means the gripper was closed before it.
    got = standardize.convert_gripper(tf.constant([0.0, -1.0, 0.0]), "relative_close_pm1")
    np.testing.assert_allclose(got.numpy(), [0.0, 1.0, 1.0])


def test_images_keep_their_aspect_with_black_padding():
    image = np.full((1, 8, 16, 3), 255, np.uint8)  # twice as wide as tall
    out = standardize._resize(tf.constant(image), (16, 16)).numpy()[0]
    assert out.shape == (16, 16, 3)
    assert (out[:4] == 0).all() and (out[12:] == 0).all() and (out[4:12] == 255).all()


def test_euler_wrapping():
    x = tf.constant([[np.pi + 0.1, 3 * np.pi - 0.2, 0.5]])
    out = standardize.wrap_angles(x, [0, 1]).numpy()
    np.testing.assert_allclose(out, [[-np.pi + 0.1, np.pi - 0.2, 0.5]], atol=1e-5)


def test_unknown_dataset_lists_features_and_a_starter_mapping(root, capsys):
    directory = os.path.join(root, "taco_play")
    with pytest.raises(standardize.LayoutError) as error:
        standardize.resolve_mappings(["my_robot"], [directory])
    message = str(error.value)
    for text in (
        "no mapping for dataset 'my_robot'",
        "observation/robot_obs",
        "[15]",
        "action/rel_actions_world",
        "observation/rgb_static",
        "(image)",
        "starter mapping",
        "data.mappings.my_robot",
    ):
        assert text in message, text
    assert inspect_cli.main([directory]) == 0
    printed = capsys.readouterr().out
    assert "observation/robot_obs" in printed and "starter mapping" in printed
    assert "registered mapping: taco_play" in printed
    # The starter mapping is valid and, edited in a config (no code change), trains.
    user = ml_collections.ConfigDict(
        {
            "my_robot": {
                "cameras": {"primary": "observation/rgb_static"},
                "state": ["observation/robot_obs[0:3]", "zeros:2"],
                "action": ["action/actions"],
                "instruction": ["observation/natural_language_instruction"],
            }
        }
    )
    (mapping,) = standardize.resolve_mappings(["my_robot"], [directory], user)
    described = standardize.describe_features(rlds.load_builder(directory).info.features)
    fn, _ = standardize.make_standardizer(mapping, described, images=False)
    traj = next(rlds.load_rlds_episodes(directory, decode_images=False).map(fn).as_numpy_iterator())
    assert traj["observation"]["state"].shape == (LENGTHS[0], 5)
    assert traj["state_mask"].tolist() == [True] * 3 + [False] * 2
    np.testing.assert_array_equal(traj["observation"]["state"][:, 3:], 0.0)


def test_a_mapping_naming_missing_keys_is_refused_with_the_features(root):
    bad = {"state": ["observation/proprio"], "action": ["action/world_vector"]}
    with pytest.raises(standardize.LayoutError, match="missing state: 'observation/proprio'") as e:
        standardize.resolve_mappings(["x"], [os.path.join(root, "bridge")], {"x": bad})
    assert "observation/state" in str(e.value)


def test_newest_version_name_mismatch_and_other_splits(tmp_path):
    write_layout("libero_10_no_noops", tmp_path, lengths=(3,), version="1.0.0")
    write_layout("libero_10_no_noops", tmp_path, lengths=(4, 5), version="1.0.10")
    for given in (tmp_path, tmp_path / "libero_10_no_noops"):
        path = rlds.resolve_dataset_dir(given)
        assert path.name == "1.0.10"  # newest, numerically (1.0.10 > 1.0.9 > 1.0.0)
    assert rlds.load_builder(tmp_path).info.name == "liber_o10"
    val = tmp_path / "val"
    write_layout("aloha", val, lengths=(3, 2), split="val")
    lengths = [
        t["action"].shape[0] for t in rlds.load_rlds_episodes(val, split="val").as_numpy_iterator()
    ]
    assert lengths == [3, 2]
    with pytest.raises(ValueError, match="has no split 'train'"):
        rlds.load_rlds_episodes(val)


def test_filters_drop_failures_and_all_zero_episodes(tmp_path):
    episodes = episodes_of("libero_10_no_noops", (4, 4, 4))
    episodes[1]["action"][:, :6] = 0.0  # never moves
    episodes[2]["reward"][-1] = 1.0  # the only success
    rlds.write_rlds_dataset(episodes, tmp_path, name="liber_o10")
    described = standardize.describe_features(rlds.load_builder(tmp_path).info.features)
    mapping = dict(standardize.REGISTRY["libero_10_no_noops"])

    def kept(**options):
        fn, keep = standardize.make_standardizer(dict(mapping, **options), described, images=False)
        ds = rlds.load_rlds_episodes(tmp_path, decode_images=False).map(fn).filter(keep)
        return len(list(ds.as_numpy_iterator()))

    assert kept() == 3
    assert kept(filter_zero_action_episodes=True) == 2
    assert kept(success_key="reward", filter_failures=True) == 1


def test_validator_names_dataset_episode_and_key(tmp_path):
    episodes = episodes_of("droid", (4, 5))
    episodes[1]["step_fields"]["action_dict"]["cartesian_velocity"][2, 1] = np.nan
    rlds.write_rlds_dataset(episodes, tmp_path, name="r2d2_faceblur")
    mapping = standardize.get_mapping("droid")
    report = validate.validate_dataset(tmp_path, mapping=mapping, name="droid")
    found = [f for f in report.findings if f.code == "non_finite"]
    assert {f.episode for f in found} == {1}
    assert any("'action_dict/cartesian_velocity'" in f.message for f in found)
    assert any("'action'" in f.message for f in found)  # the standardized action too
    assert "dataset 'droid' at" in report.format()
    with pytest.raises(standardize.LayoutError, match="action_dict/joint_position"):
        bad = dict(mapping, action=["action_dict/joint_position"])
        validate.validate_dataset(tmp_path, mapping=bad, name="droid")
