"""Foreign RLDS layouts -> our trajectory layout, through a named mapping declared as data.

Real RLDS datasets (Open X-Embodiment, openvla's LIBERO, DROID, ALOHA recordings) keep
their cameras, proprio, instruction and action under keys of their own. A *mapping* (a
plain dict, so it can live in an ml_collections config) says where each part is; the
standardizer built from it (`make_standardizer`, tf ops inside tf.data) turns one
trajectory as `rlds.load_rlds_episodes` yields it into the layout the window pipeline
reads (the one our own writer produces)::

    {"observation": {"state": [L, S] float32, "image/<slot>": [L, h, w, 3] uint8},
     "image_mask": {<slot>: [L] bool}, "state_mask": [S] bool,
     "action": [L, A] float32, "language_instruction": [L] string}

The core never learns another project's key names: they appear only in mappings.

A mapping (keys are the trajectory's "/"-joined feature paths, as
`python -m action_gen.data.inspect DIR` lists them)::

    cameras:      {slot: key}  camera key -> our camera slot ("primary", "wrist", ...);
                  images are resized to the model's size with the aspect kept (black
                  padding, `tf.image.resize_with_pad`); a slot the run uses but the mapping
                  does not name is a black frame with image_mask False.
    camera_masks: {slot: key}  a bool (per episode or per step) that is False where the
                  slot's frames are padding (bridge_dataset's episode_metadata/has_image_i).
    state:        [part, ...]  concatenated in this order into [L, S] float32.
    action:       [part, ...]  concatenated in this order into [L, A] float32; dict
                  actions list their parts ("action/world_vector"); bool and int parts are
                  cast to float (0/1, one-hot stays one-hot).
                  A part is "key", "key[a:b]" (a slice of its last axis) or "zeros:N" (N
                  zero-filled dims, False in state_mask: a part this robot lacks).
    instruction:  [key, ...]   the first non-empty of these per episode, from the step
                  ("language_instruction"), the observation
                  ("observation/natural_language_instruction") or the episode metadata
                  ("episode_metadata/..."); "" when none (an unconditioned episode).
    gripper:      [{"dim": d, "convention": c}, ...]  action dims converted to the one
                  convention used here: 1 = open, 0 = closed, in [0, 1] (Octo / openvla).
                  Conventions (GRIPPER_CONVENTIONS): open_01, closed_01, open_pm1,
                  closed_pm1, open_bool, open_0_100, closed_0_100, relative_close_pm1.
    action_euler, state_euler: [dim, ...]  euler-angle dims wrapped to [-pi, pi)
                  (atan2(sin x, cos x)), so a yaw of pi - e and -pi + e stay neighbours.
    trim_zero_actions: drop leading / trailing steps whose non-gripper action dims are
                  all zero (bridge's first step, DROID's idle start).
    filter_zero_action_episodes: drop episodes whose non-gripper action dims are all zero.
    success_key:  "" or a key; with filter_failures, episodes where it is never > 0 are
                  dropped (a step reward or an episode-metadata flag).
    control_hz:   the control rate (no RLDS field records it; documentation + validator).
    tfds_names:   TFDS names the dataset is stored under, when they differ from the
                  registry name (read from dataset_info.json, never from the path).

A user adds a dataset with a JSON file {"<name>": mapping} passed as
`--config.data.mapping_file=FILE` (`load_mapping_file`), or with `data.mappings.<name>` in a
config file: no code change. An unknown name, or a mapping whose keys the dataset lacks, raises
`LayoutError` listing every feature (key, shape, dtype) and a starter mapping.
"""

import copy
import hashlib
import json
import os
import pprint
import re
from collections.abc import Mapping, Sequence

import numpy as np

# The one gripper convention of standardized actions: 1 = open, 0 = closed, in [0, 1].
GRIPPER_CONVENTIONS = (
    "open_01",  # already 1 = open, 0 = closed
    "closed_01",  # 1 = closed (DROID gripper_position): 1 - x
    "open_pm1",  # +1 open, -1 closed (taco_play): (x + 1) / 2
    "closed_pm1",  # +1 closed, -1 open (LIBERO): (1 - x) / 2
    "open_bool",  # bool open_gripper (OXE bridge)
    "open_0_100",  # 0..100, 100 = open: x / 100
    "closed_0_100",  # 0..100, 100 = closed: 1 - x / 100
    "relative_close_pm1",  # relative: +1 close, -1 open, 0 keep (RT-1): made absolute
)
MAPPING_KEYS = (
    "cameras",
    "camera_masks",
    "state",
    "action",
    "instruction",
    "gripper",
    "action_euler",
    "state_euler",
    "trim_zero_actions",
    "filter_zero_action_episodes",
    "success_key",
    "filter_failures",
    "control_hz",
    "tfds_names",
)
_DEFAULTS = {
    "cameras": {},
    "camera_masks": {},
    "state": [],
    "instruction": [],
    "gripper": [],
    "action_euler": [],
    "state_euler": [],
    "trim_zero_actions": False,
    "filter_zero_action_episodes": False,
    "success_key": "",
    "filter_failures": False,
    "control_hz": 0.0,
    "tfds_names": [],
}
_PART = re.compile(r"^(?P<key>[^\[\]]+?)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")
_ZEROS = re.compile(r"^zeros:(?P<n>\d+)$")
# Action dims whose absolute value is at most this count as zero (trim / filter).
_ZERO_TOL = 1e-8

_LIBERO = {
    # openvla's modified LIBERO RLDS (no-op steps removed); 256x256 agent-view and wrist
    # cameras, 8-d state (eef position 3, axis-angle 3, gripper fingers 2), 7-d delta
    # action whose last dim is -1 open / +1 close. 20 Hz.
    "cameras": {"primary": "observation/image", "wrist": "observation/wrist_image"},
    "state": ["observation/state"],
    "action": ["action"],
    "instruction": ["language_instruction"],
    "gripper": [{"dim": 6, "convention": "closed_pm1"}],
    "control_hz": 20.0,
}

# Mappings from the public feature specs (the TFDS builders of Open X-Embodiment, openvla's
# LIBERO RLDS, DROID's RLDS release, ALOHA-style RLDS conversions), checked against Octo's
# and openvla's standardization transforms.
REGISTRY: dict[str, dict] = {
    "fractal20220817_data": {
        # RT-1: one 256x320 camera; instruction inside the observation; dict action with a
        # relative gripper (+1 close, -1 open) and an int32[3] terminate_episode one-hot
        # (left out: it is not a motion). State: base_pose_tool_reached (xyz + quaternion)
        # and gripper_closed. 3 Hz.
        "cameras": {"primary": "observation/image"},
        "state": ["observation/base_pose_tool_reached", "observation/gripper_closed"],
        "action": [
            "action/world_vector",
            "action/rotation_delta",
            "action/gripper_closedness_action",
        ],
        "instruction": ["observation/natural_language_instruction"],
        "gripper": [{"dim": 6, "convention": "relative_close_pm1"}],
        "action_euler": [3, 4, 5],
        "control_hz": 3.0,
    },
    "bridge": {
        # The Open X-Embodiment copy of Bridge (WidowX): one 480x640 camera, 7-d state
        # (xyz, roll/pitch/yaw, gripper), dict action with a bool open_gripper; the first
        # step's action is all zero (openvla drops it). 5 Hz.
        "cameras": {"primary": "observation/image"},
        "state": ["observation/state"],
        "action": ["action/world_vector", "action/rotation_delta", "action/open_gripper"],
        "instruction": ["observation/natural_language_instruction"],
        "gripper": [{"dim": 6, "convention": "open_bool"}],
        "action_euler": [3, 4, 5],
        "state_euler": [3, 4, 5],
        "trim_zero_actions": True,
        "control_hz": 5.0,
    },
    "bridge_dataset": {
        # Bridge V2 as released by its authors: image_0..image_3 (256x256), views that were
        # not recorded are black frames flagged by episode_metadata/has_image_i; 7-d
        # float action whose last dim is the gripper (1 = open); step-level instruction.
        "cameras": {
            "primary": "observation/image_0",
            "secondary": "observation/image_1",
            "wrist": "observation/image_3",
        },
        "camera_masks": {
            "primary": "episode_metadata/has_image_0",
            "secondary": "episode_metadata/has_image_1",
            "wrist": "episode_metadata/has_image_3",
        },
        "state": ["observation/state"],
        "action": ["action"],
        "instruction": ["language_instruction"],
        "gripper": [{"dim": 6, "convention": "open_01"}],
        "action_euler": [3, 4, 5],
        "state_euler": [3, 4, 5],
        "trim_zero_actions": True,
        "control_hz": 5.0,
    },
    "taco_play": {
        # 150x200 static and 84x84 gripper cameras; robot_obs (15) holds eef xyz + euler
        # (0:6), gripper width (6), joints (7:14), gripper action (14): openvla takes 0:6
        # and 7:8; the action dict's rel_actions_world is the 7-d delta, gripper -1 close
        # / +1 open. 15 Hz.
        "cameras": {"primary": "observation/rgb_static", "wrist": "observation/rgb_gripper"},
        "state": ["observation/robot_obs[0:6]", "observation/robot_obs[7:8]"],
        "action": ["action/rel_actions_world"],
        "instruction": ["observation/natural_language_instruction"],
        "gripper": [{"dim": 6, "convention": "open_pm1"}],
        "action_euler": [3, 4, 5],
        "state_euler": [3, 4, 5],
        "control_hz": 15.0,
    },
    "libero_10_no_noops": dict(_LIBERO, tfds_names=["liber_o10", "libero_10_no_noops"]),
    "libero_goal_no_noops": dict(_LIBERO, tfds_names=["libero_goal", "libero_goal_no_noops"]),
    "libero_object_no_noops": dict(_LIBERO, tfds_names=["libero_object", "libero_object_no_noops"]),
    "libero_spatial_no_noops": dict(
        _LIBERO, tfds_names=["libero_spatial", "libero_spatial_no_noops"]
    ),
    "droid": {
        # DROID's RLDS (TFDS name r2d2_faceblur): two exterior and one wrist camera
        # (180x320), float64 state split over cartesian_position (6) and gripper_position
        # (1, 1 = closed), float64 action_dict; three instruction fields, often some empty.
        # 15 Hz.
        "cameras": {
            "primary": "observation/exterior_image_1_left",
            "secondary": "observation/exterior_image_2_left",
            "wrist": "observation/wrist_image_left",
        },
        "state": ["observation/cartesian_position", "observation/gripper_position"],
        "action": ["action_dict/cartesian_velocity", "action_dict/gripper_position"],
        "instruction": [
            "language_instruction",
            "language_instruction_2",
            "language_instruction_3",
        ],
        "gripper": [{"dim": 6, "convention": "closed_01"}],
        "control_hz": 15.0,
        "tfds_names": ["r2d2_faceblur", "droid", "droid_100"],
    },
    "aloha": {
        # ALOHA-style bimanual recordings (the openpi / LeRobot-to-RLDS layout): cam_high,
        # cam_low and two wrist cameras (480x640), 14-d joint state and absolute joint
        # action (per arm: 6 joints then the gripper, normalized 0 closed .. 1 open). 50 Hz.
        "cameras": {
            "primary": "observation/cam_high",
            "left_wrist": "observation/cam_left_wrist",
            "right_wrist": "observation/cam_right_wrist",
        },
        "state": ["observation/state"],
        "action": ["action"],
        "instruction": ["language_instruction"],
        "gripper": [
            {"dim": 6, "convention": "open_01"},
            {"dim": 13, "convention": "open_01"},
        ],
        "control_hz": 50.0,
    },
}


class LayoutError(ValueError):
    """A dataset whose layout no mapping explains; the message lists its features and a
    starter mapping to edit."""


# ----------------------------------------------------------------------------- mappings


def _plain(value):
    """A ConfigDict / FrozenConfigDict / tuple tree as plain dicts and lists."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def check_mapping(mapping: Mapping, name: str = "<mapping>") -> dict:
    """The mapping with defaults filled in and every field checked.

    Raises:
      ValueError: naming the dataset and the field.
    """
    mapping = _plain(mapping)
    unknown = sorted(set(mapping) - set(MAPPING_KEYS))
    if unknown:
        raise ValueError(f"mapping of {name!r}: unknown fields {unknown}; known: {MAPPING_KEYS}")
    out = copy.deepcopy(_DEFAULTS) | copy.deepcopy(mapping)
    if not out.get("action"):
        raise ValueError(f"mapping of {name!r}: 'action' must list at least one part")
    for field in ("state", "action"):
        if isinstance(out[field], str):
            out[field] = [out[field]]
        for part in out[field]:
            if not (_ZEROS.match(part) or _PART.match(part)):
                raise ValueError(
                    f"mapping of {name!r}: {field} part {part!r} is neither 'key', "
                    "'key[a:b]' nor 'zeros:N'"
                )
    if isinstance(out["instruction"], str):
        out["instruction"] = [out["instruction"]] if out["instruction"] else []
    if isinstance(out["gripper"], Mapping):
        out["gripper"] = [out["gripper"]]
    for grip in out["gripper"]:
        if grip.get("convention") not in GRIPPER_CONVENTIONS or "dim" not in grip:
            raise ValueError(
                f"mapping of {name!r}: gripper entry {grip} needs 'dim' and a 'convention' "
                f"in {GRIPPER_CONVENTIONS}"
            )
    unknown_masks = sorted(set(out["camera_masks"]) - set(out["cameras"]))
    if unknown_masks:
        raise ValueError(f"mapping of {name!r}: camera_masks for unknown slots {unknown_masks}")
    return out


def mapping_fingerprint(mapping: Mapping) -> str:
    """A short hash of a (checked) mapping: names the norm-stats cache of a mapped dataset."""
    text = json.dumps(check_mapping(mapping), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def get_mapping(name: str, user_mappings: Mapping | None = None) -> dict | None:
    """The mapping of dataset `name`: the user's (`data.mappings.<name>`, `data.mapping_file`)
    first, then the registry's; None when neither has one."""
    user = _plain(user_mappings or {})
    if name in user:
        return check_mapping(user[name], name)
    if name in REGISTRY:
        return check_mapping(REGISTRY[name], name)
    return None


def load_mapping_file(path: str) -> dict:
    """{name: mapping} from a JSON file (`data.mapping_file`), each mapping checked.

    Raises:
      FileNotFoundError / ValueError naming the file (and the dataset, for a bad mapping).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.mapping_file: no such file: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"data.mapping_file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"data.mapping_file {path} must be a JSON object {{name: mapping}}")
    return {name: check_mapping(mapping, f"{name} ({path})") for name, mapping in data.items()}


def user_mappings(data_config) -> dict:
    """The run's own mappings: `data.mappings` and those of `data.mapping_file`."""
    out = dict(_plain(data_config.mappings or {}))
    if data_config.mapping_file:
        out.update(load_mapping_file(data_config.mapping_file))
    return out


def camera_slots(mappings: Sequence[Mapping]) -> list[str]:
    """The camera slots of a run: the union over its datasets' mappings, sorted."""
    return sorted({slot for m in mappings for slot in check_mapping(m)["cameras"]})


# ----------------------------------------------------------------------------- features


def describe_features(features) -> dict[str, tuple[tuple, str, str]]:
    """{"/"-joined key: (per-step shape, dtype, kind)} of an RLDS dataset's features, as the
    standardizer sees them: step fields ("observation/image", "action/world_vector",
    "language_instruction") and "episode_metadata/..." (kind: "image", "text", "tensor")."""
    import tensorflow_datasets as tfds

    out = {}

    def walk(feature, prefix):
        if isinstance(feature, tfds.features.Dataset):
            walk(feature.feature, prefix)
        elif isinstance(feature, tfds.features.FeaturesDict):
            for key, sub in feature.items():
                walk(sub, f"{prefix}/{key}" if prefix else key)
        elif isinstance(feature, tfds.features.Image):
            out[prefix] = (tuple(feature.shape), "uint8", "image")
        elif isinstance(feature, tfds.features.Text):
            out[prefix] = ((), "string", "text")
        else:
            shape = tuple(getattr(feature, "shape", ()))
            dtype = np.dtype(getattr(feature, "np_dtype", np.float32)).name
            out[prefix] = (shape, dtype, "tensor")

    walk(features["steps"], "")
    if "episode_metadata" in features:
        walk(features["episode_metadata"], "episode_metadata")
    for key in features.keys():
        if key not in ("steps", "episode_metadata"):
            walk(features[key], f"episode_metadata/{key}")
    return out


def starter_mapping(described: Mapping) -> dict:
    """A mapping guessed from `describe_features`: a starting point to edit, not an answer
    (check the gripper convention and the state parts against the dataset's docs)."""
    images = [k for k, (s, _, kind) in described.items() if kind == "image" and s[-1] == 3]
    cameras = {}
    for key in images:
        leaf = key.rsplit("/", 1)[-1].lower()
        if any(w in leaf for w in ("wrist", "gripper", "hand")) and "wrist" not in cameras:
            cameras["wrist"] = key
        elif "primary" not in cameras:
            cameras["primary"] = key
        else:
            cameras[re.sub(r"[^a-z0-9_]+", "_", leaf)] = key
    numeric = {
        k: v
        for k, v in described.items()
        if v[2] == "tensor" and v[1].startswith(("float", "int", "uint", "bool"))
    }
    obs = [k for k in numeric if k.startswith("observation/") and len(numeric[k][0]) <= 1]
    preferred = [k for k in obs if k.rsplit("/", 1)[-1] in ("state", "proprio")]
    state = preferred or [k for k in obs if "embedding" not in k and "float" in numeric[k][1]]
    if "action" in numeric:
        action = ["action"]
    else:
        action = sorted(
            k
            for k in numeric
            if k.startswith("action/") and "terminate" not in k and len(numeric[k][0]) <= 1
        )
    texts = [k for k, v in described.items() if v[2] == "text" and "instruction" in k]
    return {
        "cameras": cameras,
        "state": sorted(state),
        "action": action,
        "instruction": texts,
        "gripper": [],  # e.g. [{"dim": 6, "convention": "open_01"}]; see GRIPPER_CONVENTIONS
    }


def format_features(described: Mapping) -> str:
    """The feature table printed by `inspect` and by LayoutError."""
    width = max((len(k) for k in described), default=3)
    lines = [f"  {'key':<{width}}  {'shape':<16} dtype"]
    for key, (shape, dtype, kind) in sorted(described.items()):
        note = " (image)" if kind == "image" else ""
        lines.append(f"  {key:<{width}}  {str(list(shape)):<16} {dtype}{note}")
    return "\n".join(lines)


def layout_report(path: str, name: str, described: Mapping) -> str:
    """Features + a starter mapping, ready to paste into a config."""
    starter = pprint.pformat(starter_mapping(described), width=88, sort_dicts=False)
    return (
        f"features of {path} (per step; episode-level under episode_metadata/):\n"
        f"{format_features(described)}\n"
        f"starter mapping (edit, save as JSON {{{name!r}: mapping}} and pass "
        f"--config.data.mapping_file=FILE, or set data.mappings.{name} in a config file; "
        f"conventions in action_gen/data/standardize.py):\n{starter}"
    )


def _part_key(part: str) -> str | None:
    if _ZEROS.match(part):
        return None
    return _PART.match(part).group("key")


def check_against_features(mapping: Mapping, described: Mapping, path: str, name: str) -> None:
    """Raises LayoutError (features + starter mapping) when the mapping names a key the
    dataset does not have, or a camera that is not an image."""
    mapping = check_mapping(mapping, name)
    missing = []
    for field in ("state", "action"):
        for part in mapping[field]:
            key = _part_key(part)
            if key is not None and key not in described:
                missing.append(f"{field}: {key!r}")
    for field in ("cameras", "camera_masks"):
        for slot, key in mapping[field].items():
            if key not in described:
                missing.append(f"{field}.{slot}: {key!r}")
            elif field == "cameras" and described[key][2] != "image":
                missing.append(f"cameras.{slot}: {key!r} is not an image feature")
    for key in mapping["instruction"]:
        if key not in described:
            missing.append(f"instruction: {key!r}")
    if mapping["success_key"] and mapping["success_key"] not in described:
        missing.append(f"success_key: {mapping['success_key']!r}")
    if missing:
        raise LayoutError(
            f"the mapping of {name!r} does not fit the RLDS dataset {path}: missing "
            f"{'; '.join(missing)}.\n{layout_report(path, name, described)}"
        )


def unknown_dataset_error(path: str, name: str, described: Mapping) -> LayoutError:
    known = ", ".join(sorted(REGISTRY))
    return LayoutError(
        f"no mapping for dataset {name!r} (registered: {known}); add one with "
        f"--config.data.mapping_file=FILE.\n{layout_report(path, name, described)}"
    )


# ----------------------------------------------------------------------------- tf ops


def _flatten(traj: Mapping) -> dict:
    """One level of "/"-joined keys over a trajectory's nested dicts."""
    out = {}

    def walk(value, prefix):
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = value

    walk(traj, "")
    return out


def _part(flat: Mapping, part: str, length):
    """[L, d] float32 of one state / action part (episode-level values broadcast)."""
    import tensorflow as tf

    zeros = _ZEROS.match(part)
    if zeros:
        return tf.zeros([length, int(zeros.group("n"))], tf.float32)
    match = _PART.match(part)
    value = flat[match.group("key")]
    if value.dtype == tf.bool:
        value = tf.cast(value, tf.float32)
    value = tf.cast(value, tf.float32)
    if match.group("key").startswith("episode_metadata/"):
        value = tf.broadcast_to(tf.reshape(value, [1, -1]), [length, tf.size(value)])
    value = tf.reshape(value, [length, -1])
    if match.group(2):
        start = int(match.group("start")) if match.group("start") else None
        stop = int(match.group("stop")) if match.group("stop") else None
        value = value[:, start:stop]
    return value


def part_dims(parts: Sequence[str], described: Mapping) -> list[int]:
    """Width of each part (from the feature shapes), for the state mask."""
    dims = []
    for part in parts:
        zeros = _ZEROS.match(part)
        if zeros:
            dims.append(int(zeros.group("n")))
            continue
        match = _PART.match(part)
        width = int(np.prod(described[match.group("key")][0], dtype=np.int64))
        if match.group(2):
            start = int(match.group("start")) if match.group("start") else None
            stop = int(match.group("stop")) if match.group("stop") else None
            width = len(range(width)[slice(start, stop)])
        dims.append(width)
    return dims


def convert_gripper(x, convention: str):
    """[L] gripper action in `convention` -> [L] float32, 1 = open, 0 = closed, in [0, 1].

    relative_close_pm1 (RT-1's gripper_closedness_action): a step's command is +1 (close),
    -1 (open) or ~0 (keep); the absolute state at step t is the last command at or before
    t, and before the first one the gripper is taken to be in the state opposite to it
    (open when it never moves), as Octo's rel2abs_gripper_actions does.
    """
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    if convention == "open_01" or convention == "open_bool":
        y = x
    elif convention == "closed_01":
        y = 1.0 - x
    elif convention == "open_pm1":
        y = (x + 1.0) / 2.0
    elif convention == "closed_pm1":
        y = (1.0 - x) / 2.0
    elif convention == "open_0_100":
        y = x / 100.0
    elif convention == "closed_0_100":
        y = 1.0 - x / 100.0
    elif convention == "relative_close_pm1":
        command = tf.where(x < -0.1, 1.0, tf.where(x > 0.1, -1.0, 0.0))  # +1 open, -1 close
        steps = tf.range(tf.shape(command, out_type=tf.int64)[0])
        marked = tf.where(command != 0, steps, -1)
        last = tf.scan(tf.maximum, marked, initializer=tf.constant(-1, tf.int64))
        nonzero = tf.boolean_mask(command, command != 0)
        start = tf.cond(tf.size(nonzero) > 0, lambda: -nonzero[0], lambda: tf.constant(1.0))
        state = tf.where(last >= 0, tf.gather(command, tf.maximum(last, 0)), start)
        y = (state + 1.0) / 2.0
    else:
        raise ValueError(f"unknown gripper convention {convention!r}; {GRIPPER_CONVENTIONS}")
    return tf.clip_by_value(y, 0.0, 1.0)


def wrap_angles(x, dims: Sequence[int]):
    """[L, D] with the listed dims wrapped to [-pi, pi) (atan2(sin, cos); others as is)."""
    import tensorflow as tf

    if not dims:
        return x
    width = x.shape[-1]
    mask = np.zeros(width, bool)
    mask[list(dims)] = True
    wrapped = tf.atan2(tf.sin(x), tf.cos(x))
    return tf.where(tf.constant(mask)[None, :], wrapped, x)


def _instruction(flat: Mapping, keys: Sequence[str], length):
    """[L] string: per episode the first of `keys` that is non-empty at step 0."""
    import tensorflow as tf

    out = tf.fill([length], "")
    for key in reversed(list(keys)):
        value = flat[key]
        if key.startswith("episode_metadata/"):
            value = tf.fill([length], tf.reshape(value, [])) if value.shape.rank == 0 else value
        value = tf.reshape(value, [length])
        nonempty = tf.strings.length(tf.strings.strip(value[:1])) > 0
        out = tf.cond(tf.reduce_all(nonempty) & (length > 0), lambda v=value: v, lambda o=out: o)
    return out


def _resize(images, size):
    """[L, H, W, 3] uint8 -> [L, h, w, 3] uint8, aspect kept, padded with black: the policy
    server's own resize (data/images.py, PIL), so recordings and robot requests of any size
    give the model the same pixels."""
    import tensorflow as tf

    from action_gen.data import images as image_lib  # noqa: PLC0415

    height, width = (int(s) for s in size)
    if images.shape[1:3] == (height, width):
        return images
    out = tf.numpy_function(
        lambda x: image_lib.resize_frames(x, height, width), [images], tf.uint8, stateful=False
    )
    return tf.ensure_shape(out, [None, height, width, 3])


def _motion_dims(mapping: Mapping, action_dim: int) -> np.ndarray:
    """Mask [A] of the action dims that are not grippers (for trim / filter)."""
    mask = np.ones(action_dim, bool)
    for grip in mapping["gripper"]:
        mask[grip["dim"]] = False
    return mask


def make_standardizer(
    mapping: Mapping,
    described: Mapping,
    *,
    cameras: Mapping[str, Sequence[int]] | None = None,
    images: bool = True,
    image_masks: bool = False,
):
    """The tf function: one raw RLDS trajectory -> our layout (module docstring).

    Args:
      mapping: a mapping (`check_mapping`).
      described: `describe_features` of the dataset (widths of the parts, camera shapes).
      cameras: {slot: (h, w)} the run's camera slots at the model's size; slots the
        mapping lacks are black frames with image_mask False. None: the mapping's own
        slots at their stored sizes.
      images: False for passes over states and actions only (images never decoded).
      image_masks: emit "image_mask" {slot: [L] bool}.
    Returns:
      (standardize(traj) -> traj, keep(traj) -> bool scalar: the episode filter).
    """
    import tensorflow as tf

    mapping = check_mapping(mapping)
    state_dims = part_dims(mapping["state"], described)
    state_mask = np.concatenate(
        [
            np.full(d, not _ZEROS.match(p), bool)
            for p, d in zip(mapping["state"], state_dims, strict=True)
        ]
        or [np.zeros(0, bool)]
    )
    action_dim = sum(part_dims(mapping["action"], described))
    for grip in mapping["gripper"]:
        if not -action_dim <= grip["dim"] < action_dim:
            raise ValueError(f"gripper dim {grip['dim']} outside the {action_dim}-d action")
    for grip in mapping["gripper"]:
        grip["dim"] %= action_dim
    motion = tf.constant(_motion_dims(mapping, action_dim))
    if cameras is None:
        cameras = {s: described[k][0][:2] for s, k in mapping["cameras"].items()}

    def standardize(traj):
        flat = _flatten(traj)
        raw_action = flat["action"] if "action" in flat else None
        first = (
            raw_action
            if raw_action is not None
            else next(v for k, v in flat.items() if k.startswith("action/"))
        )
        length = tf.shape(first)[0]
        action = tf.concat([_part(flat, p, length) for p in mapping["action"]], axis=-1)
        action = tf.ensure_shape(action, [None, action_dim])
        columns = tf.unstack(action, num=action_dim, axis=-1)
        for grip in mapping["gripper"]:
            columns[grip["dim"]] = convert_gripper(columns[grip["dim"]], grip["convention"])
        action = wrap_angles(tf.stack(columns, axis=-1), mapping["action_euler"])
        if mapping["state"]:
            state = tf.concat([_part(flat, p, length) for p in mapping["state"]], axis=-1)
            state = tf.ensure_shape(state, [None, len(state_mask)])
            state = wrap_angles(state, mapping["state_euler"])
        else:
            state = tf.zeros([length, 0], tf.float32)
        observation = {"state": state}
        masks = {}
        if images:
            for slot, size in cameras.items():
                key = mapping["cameras"].get(slot)
                if key is None:
                    observation[f"image/{slot}"] = tf.zeros([length, *size, 3], tf.uint8)
                    masks[slot] = tf.zeros([length], tf.bool)
                    continue
                observation[f"image/{slot}"] = _resize(flat[key], size)
                present = tf.ones([length], tf.bool)
                if slot in mapping["camera_masks"]:
                    flag = tf.cast(flat[mapping["camera_masks"][slot]], tf.bool)
                    present = tf.broadcast_to(tf.reshape(flag, [-1]), [length]) & present
                masks[slot] = present
        out = {
            "observation": observation,
            "action": action,
            "language_instruction": _instruction(flat, mapping["instruction"], length),
            "state_mask": tf.constant(state_mask),
        }
        if images and image_masks:
            out["image_mask"] = masks
        success = tf.constant(True)
        if mapping["success_key"]:
            success = tf.reduce_any(tf.cast(flat[mapping["success_key"]], tf.float32) > 0)
        out["_success"] = success
        if mapping["trim_zero_actions"]:
            out = _trim(out, motion)
        return out

    def keep(traj):
        ok = tf.shape(traj["action"])[0] > 0
        if mapping["filter_failures"]:
            ok = ok & traj["_success"]
        if mapping["filter_zero_action_episodes"]:
            moving = tf.reduce_any(
                tf.abs(tf.boolean_mask(traj["action"], motion, axis=1)) > _ZERO_TOL
            )
            ok = ok & moving
        return ok

    return standardize, keep


def _trim(traj, motion):
    """Drops the leading and trailing steps whose motion dims are all zero."""
    import tensorflow as tf

    moving = tf.reduce_any(tf.abs(tf.boolean_mask(traj["action"], motion, axis=1)) > _ZERO_TOL, 1)
    where = tf.where(moving)[:, 0]
    start = tf.cond(tf.size(where) > 0, lambda: where[0], lambda: tf.constant(0, tf.int64))
    stop = tf.cond(tf.size(where) > 0, lambda: where[-1] + 1, lambda: tf.constant(0, tf.int64))

    def cut(x):
        return x[start:stop]

    out = dict(traj)
    out["observation"] = {k: cut(v) for k, v in traj["observation"].items()}
    out["action"] = cut(traj["action"])
    out["language_instruction"] = cut(traj["language_instruction"])
    if "image_mask" in traj:
        out["image_mask"] = {k: cut(v) for k, v in traj["image_mask"].items()}
    return out


def state_action_dims(mapping: Mapping, described: Mapping) -> tuple[int, int]:
    """(S, A) of the standardized trajectories."""
    mapping = check_mapping(mapping)
    return sum(part_dims(mapping["state"], described)), sum(part_dims(mapping["action"], described))


def registry_name_for(tfds_name: str, directory_names: Sequence[str] = ()) -> str | None:
    """The registry name whose mapping fits a dataset stored as `tfds_name` (or found in
    one of `directory_names`), or None."""
    for candidate in [*directory_names, tfds_name]:
        if candidate in REGISTRY:
            return candidate
    for name, mapping in REGISTRY.items():
        if tfds_name in mapping.get("tfds_names", ()):
            return name
    return None


# ----------------------------------------------------------------------------- a run's layouts

# Names that read our own layout (`observation/state`, `observation/image/<camera>`,
# `action`, `language_instruction`) through a mapping made from the features, so its
# cameras get the run's slots and size: a LeRobot dataset after its conversion, or any
# RLDS dataset our writer produced.
NATIVE_NAMES = ("native", "lerobot")


def native_mapping(described: Mapping) -> dict:
    """The mapping of our own layout, its cameras named after their keys."""
    prefix = "observation/image/"
    cameras = {
        k.removeprefix(prefix): k
        for k, v in described.items()
        if k.startswith(prefix) and v[2] == "image"
    }
    state = ["observation/state"] if "observation/state" in described else []
    instruction = ["language_instruction"] if "language_instruction" in described else []
    return check_mapping(
        {"cameras": cameras, "state": state, "action": ["action"], "instruction": instruction}
    )


def resolve_mappings(
    names: Sequence[str], dataset_dirs: Sequence[str], user_mappings: Mapping | None = None
) -> list[dict]:
    """The mapping of each (name, dataset directory) of a run, checked against the dataset.

    Raises:
      LayoutError: an unknown name, or a mapping the dataset does not fit (the message
        lists the dataset's features and a starter mapping).
    """
    from action_gen.data import rlds  # TensorFlow, only when reading from disk

    out = []
    for name, path in zip(names, dataset_dirs, strict=True):
        builder = rlds.load_builder(path)
        described = describe_features(builder.info.features)
        mapping = get_mapping(name, user_mappings)
        if mapping is None and name in NATIVE_NAMES:
            mapping = native_mapping(described)
        if mapping is None:
            raise unknown_dataset_error(str(builder.data_dir), name, described)
        check_against_features(mapping, described, str(builder.data_dir), name)
        out.append(mapping)
    return out


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique in order ("bridge", "bridge" -> "bridge", "bridge_2"): the keys of
    per-dataset stats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out
