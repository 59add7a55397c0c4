"""Small RLDS datasets with the real key structures of the shipped mappings.

Each builder writes episodes whose feature keys, nesting, dtypes and per-step shapes
follow the public TFDS specs of the dataset (images shrunk), with the values of the
fields the mappings read chosen so the tests can check the standardization by hand.
"""

import os
import shutil

import numpy as np

from action_gen.data import rlds

LENGTHS = (6, 5, 7)


def _rng(i):
    return np.random.default_rng(100 + i)


def _images(rng, length, h, w):
    return rng.integers(0, 255, (length, h, w, 3), dtype=np.uint8)


def fractal_episode(i, length):
    rng = _rng(i)
    gripper = np.zeros((length, 1), np.float32)
    gripper[1] = 1.0  # close at step 1 (+1 close), open again at step 4
    gripper[4] = -1.0
    terminate = np.zeros((length, 3), np.int32)
    terminate[:, 1] = 1
    terminate[-1] = [1, 0, 0]
    return {
        "observation": {
            "image": _images(rng, length, 8, 10),
            "base_pose_tool_reached": rng.normal(size=(length, 7)).astype(np.float32),
            "gripper_closed": rng.uniform(size=(length, 1)).astype(np.float32),
            "natural_language_instruction": np.asarray(["pick coke can"] * length),
            "natural_language_embedding": rng.normal(size=(length, 4)).astype(np.float32),
        },
        "action": {
            "world_vector": rng.normal(size=(length, 3)).astype(np.float32),
            "rotation_delta": rng.normal(size=(length, 3)).astype(np.float32),
            "gripper_closedness_action": gripper,
            "terminate_episode": terminate,
            "base_displacement_vector": np.zeros((length, 2), np.float32),
        },
        "reward": np.zeros(length, np.float32),
    }


def bridge_episode(i, length):
    rng = _rng(i)
    world = rng.normal(size=(length, 3)).astype(np.float32)
    rotation = rng.normal(size=(length, 3)).astype(np.float32)
    world[0] = rotation[0] = 0.0  # the OXE bridge copy starts with an all-zero action
    return {
        "observation": {
            "image": _images(rng, length, 12, 16),
            "state": rng.normal(size=(length, 7)).astype(np.float32),
            "natural_language_instruction": np.asarray([f"put the spoon {i}"] * length),
        },
        "action": {
            "world_vector": world,
            "rotation_delta": rotation,
            "open_gripper": (np.arange(length) % 2 == 0),
            "terminate_episode": np.zeros(length, np.float32),
        },
        "reward": np.zeros(length, np.float32),
    }


def taco_episode(i, length):
    rng = _rng(i)
    rel = rng.normal(size=(length, 7)).astype(np.float32)
    rel[:, 6] = np.where(np.arange(length) % 3 == 0, -1.0, 1.0)  # -1 close, +1 open
    return {
        "observation": {
            "rgb_static": _images(rng, length, 15, 20),
            "rgb_gripper": _images(rng, length, 8, 8),
            "robot_obs": rng.normal(size=(length, 15)).astype(np.float32),
            "natural_language_instruction": np.asarray(["open the drawer"] * length),
        },
        "action": {
            "actions": rng.normal(size=(length, 7)).astype(np.float32),
            "rel_actions_world": rel,
            "rel_actions_gripper": rng.normal(size=(length, 7)).astype(np.float32),
            "terminate_episode": np.zeros(length, np.float32),
        },
        "reward": np.zeros(length, np.float32),
    }


def libero_episode(i, length):
    rng = _rng(i)
    action = rng.uniform(-1, 1, size=(length, 7)).astype(np.float32)
    action[:, 6] = np.where(np.arange(length) < 3, -1.0, 1.0)  # -1 open, +1 close
    return {
        "observation": {
            "image": _images(rng, length, 16, 16),
            "wrist_image": _images(rng, length, 16, 16),
            "state": rng.normal(size=(length, 8)).astype(np.float32),
            "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        },
        "action": action,
        "reward": np.zeros(length, np.float32),
        "language_instruction": "put both the soup and the box in the basket",
    }


def droid_episode(i, length):
    rng = _rng(i)
    return {
        "observation": {
            "exterior_image_1_left": _images(rng, length, 9, 16),
            "exterior_image_2_left": _images(rng, length, 9, 16),
            "wrist_image_left": _images(rng, length, 9, 16),
            "cartesian_position": rng.normal(size=(length, 6)),  # float64, as DROID
            "gripper_position": rng.uniform(size=(length, 1)),
            "joint_position": rng.normal(size=(length, 7)),
        },
        "action": rng.normal(size=(length, 7)),
        "reward": np.zeros(length, np.float32),
        # The first instruction is empty in this episode: the second one is used.
        "language_instruction": "" if i == 0 else "wipe the table",
        "step_fields": {
            "language_instruction_2": np.asarray(["wipe the table with the towel"] * length),
            "language_instruction_3": np.asarray([""] * length),
            "action_dict": {
                "cartesian_velocity": rng.normal(size=(length, 6)),
                "gripper_position": rng.uniform(size=(length, 1)),
                "joint_velocity": rng.normal(size=(length, 7)),
            },
        },
        "episode_metadata": {"file_path": f"/droid/{i}.h5"},
    }


def aloha_episode(i, length):
    rng = _rng(i)
    action = rng.normal(size=(length, 14)).astype(np.float32)
    action[:, [6, 13]] = rng.uniform(size=(length, 2))
    return {
        "observation": {
            "cam_high": _images(rng, length, 12, 16),
            "cam_low": _images(rng, length, 12, 16),
            "cam_left_wrist": _images(rng, length, 12, 16),
            "cam_right_wrist": _images(rng, length, 12, 16),
            "state": rng.normal(size=(length, 14)).astype(np.float32),
        },
        "action": action,
        "reward": np.zeros(length, np.float32),
        "language_instruction": "insert the peg",
    }


def bridge_dataset_episode(i, length):
    rng = _rng(i)
    action = rng.normal(size=(length, 7)).astype(np.float32)
    action[:, 6] = 1.0
    return {
        "observation": {
            **{f"image_{c}": _images(rng, length, 8, 8) for c in range(4)},
            "state": rng.normal(size=(length, 7)).astype(np.float32),
        },
        "action": action,
        "reward": np.zeros(length, np.float32),
        "language_instruction": "sweep",
        "episode_metadata": {f"has_image_{c}": c == 0 or (c == 1 and i == 1) for c in range(4)},
    }


# registry name -> (episode builder, TFDS name inside, directory name)
LAYOUTS = {
    "fractal20220817_data": (fractal_episode, "fractal20220817_data", "fractal20220817_data"),
    "bridge": (bridge_episode, "bridge", "bridge"),
    "bridge_dataset": (bridge_dataset_episode, "bridge_dataset", "bridge_dataset"),
    "taco_play": (taco_episode, "taco_play", "taco_play"),
    "libero_10_no_noops": (libero_episode, "liber_o10", "libero_10_no_noops"),
    "droid": (droid_episode, "r2d2_faceblur", "droid"),
    "aloha": (aloha_episode, "aloha_sim", "aloha"),
}


def episodes_of(name, lengths=LENGTHS):
    build = LAYOUTS[name][0]
    return [build(i, length) for i, length in enumerate(lengths)]


def write_layout(name, root, *, lengths=LENGTHS, version="1.0.0", split="train") -> str:
    """Writes dataset `name` as `<root>/<directory name>/<version>` (the TFDS name inside
    may differ from the directory's, as openvla's LIBERO and DROID do). Returns the
    `<root>/<directory name>` directory (what a user passes)."""
    _, tfds_name, directory = LAYOUTS[name]
    staging = os.path.join(root, f".staging-{directory}-{version}")
    path = rlds.write_rlds_dataset(
        episodes_of(name, lengths), staging, name=tfds_name, version=version, split=split
    )
    target = os.path.join(root, directory, version)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(path, target)
    shutil.rmtree(staging)
    return os.path.join(root, directory)
