"""Robot adapters: one robot's own observation / action layout ↔ the model's, declared as data.

A policy server answers the dict a robot's client sends, and a fine-tuning run reads that
robot's recordings; both reach the model through the same adapter, the first stage of the
ordered transform pipeline (data/transforms.py). An adapter is a `RobotAdapter` value: named
entries for openpi's example clients (`ROBOTS`: libero, aloha, aloha_sim, droid) and any
other robot declared in a config (`config.robot`, `from_config`). Fields:

  cameras           {model camera slot: client key}: where each camera the model reads is in
                    the client's dict. Client keys are "/"-joined paths into the (possibly
                    nested) dict: ALOHA's {"images": {"cam_high": x}} is "images/cam_high";
                    LIBERO's flat "observation/image" is itself. A model slot no entry names
                    is a black frame with `image_mask/<slot>` False (openpi pads the same way).
  optional_cameras  client keys that may be missing from a request (black, mask False);
                    every other camera is required.
  image_layout      "hwc_or_chw": CHW when the first axis is 3, else HWC (openpi's
                    LIBERO / DROID `_parse_image`); "chw": always CHW (ALOHA). Float images
                    in [0, 1] become uint8 as 255·x truncated (openpi's conversion).
  state             [client key, ...] concatenated in this order into the robot state [S]
                    (DROID: joint_position [7] then gripper_position [1]; a scalar counts as 1).
  state_dims        the width of each state part (checked on every request).
  action_dim        A: the width of the robot's actions; the model's padded output is cut
                    to it.
  delta_action_dims openpi's `make_bool_mask` notation, e.g. (6, -1, 6, -1): positive n = n
                    dims made relative to the current state in training (action − state) and
                    absolute again on the way out, negative n = n dims left absolute;
                    () for none.
  joints            the joint / gripper convention between robot and model: "none", or
                    "aloha_pi" (openpi's `adapt_to_pi`: the sign flips of joints 1, 2, 8, 9
                    and the grippers' linear ↔ angular conversions of the π internal runtime).
  default_prompt    the instruction of a request without one ("" = none: such a request
                    is an error when the model reads language).
  dataset           {client key: [dataset feature, ...]}: where the same parts live in a
                    training dataset in our RLDS layout (a LeRobot dataset after its
                    conversion: `observation.images.<cam>` → `observation/image/<cam>`,
                    `observation.state` → `observation/state`, `action` → `action`, the
                    task → `language_instruction`); the first feature a dataset has is used.
                    "actions" and "prompt" name the action and instruction features.

The joint conventions are pure numpy functions of [..., 14] arrays (aloha_pi), so the same
code converts a served observation and a batch of training windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from action_gen.data import images, schema

IMAGE_LAYOUTS = ("hwc_or_chw", "chw")
JOINT_CONVENTIONS = ("none", "aloha_pi")
ACTIONS_KEY, PROMPT_KEY = "actions", "prompt"
# openpi's camera slots (its IMAGE_KEYS), in its fixed order.
OPENPI_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


class RobotInputError(ValueError):
    """A request the robot's adapter cannot read; the message names the key."""


@dataclasses.dataclass(frozen=True)
class RobotAdapter:
    """One robot's layout (module docstring)."""

    name: str
    cameras: Mapping[str, str]
    state: tuple[str, ...]
    state_dims: tuple[int, ...]
    action_dim: int
    optional_cameras: tuple[str, ...] = ()
    image_layout: str = "hwc_or_chw"
    delta_action_dims: tuple[int, ...] = ()
    joints: str = "none"
    default_prompt: str = ""
    dataset: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        where = f"robot {self.name!r}"
        if self.image_layout not in IMAGE_LAYOUTS:
            raise ValueError(f"{where}: image_layout must be one of {IMAGE_LAYOUTS}")
        if self.joints not in JOINT_CONVENTIONS:
            raise ValueError(f"{where}: joints must be one of {JOINT_CONVENTIONS}")
        if len(self.state) != len(self.state_dims) or not self.state:
            raise ValueError(
                f"{where}: state lists {len(self.state)} parts but state_dims "
                f"{len(self.state_dims)} widths (one per part, at least one)"
            )
        if any(d <= 0 for d in self.state_dims) or self.action_dim <= 0:
            raise ValueError(f"{where}: state_dims and action_dim must be positive")
        unknown = set(self.optional_cameras) - set(self.cameras.values())
        if unknown:
            raise ValueError(f"{where}: optional_cameras {sorted(unknown)} are not cameras")
        if self.joints == "aloha_pi" and (self.state_dim, self.action_dim) != (14, 14):
            raise ValueError(f"{where}: joints='aloha_pi' needs a 14-d state and 14-d actions")
        delta_action_mask(self.delta_action_dims, self.action_dim, where)

    @property
    def state_dim(self) -> int:
        return int(sum(self.state_dims))

    @property
    def required_keys(self) -> list[str]:
        """Client keys every request must carry (the prompt aside)."""
        cams = [k for k in self.cameras.values() if k not in self.optional_cameras]
        return sorted({*cams, *self.state})

    def describe(self) -> dict:
        """What a client sends (server metadata): key -> shape / dtype in words."""
        out = {}
        for key in self.cameras.values():
            shape = "[3, h, w]" if self.image_layout == "chw" else "[h, w, 3] or [3, h, w]"
            optional = " (optional)" if key in self.optional_cameras else ""
            out[key] = f"{shape} uint8 (or float in [0, 1]), any size{optional}"
        for key, dim in zip(self.state, self.state_dims, strict=True):
            out[key] = f"[{dim}] float"
        out[PROMPT_KEY] = "str" + (
            f" (optional; default {self.default_prompt!r})" if self.default_prompt else ""
        )
        return out

    # -- client dict → our schema (one unbatched observation) ------------------------------

    def from_client(self, obs: Mapping, image_sizes: Mapping[str, Sequence[int]]) -> dict:
        """One request as the robot sends it → one unbatched observation in our schema with
        T = 1, in the robot's own units (the joint convention is the pipeline's next stage).

        Args:
          obs: the client's dict (nested maps allowed), unbatched.
          image_sizes: {model slot: (h, w)} of the cameras the model reads.
        Returns:
          {OBS_STATE [1, S] float64, image_key(slot) [1, h, w, 3] uint8 and
           image_mask_key(slot) () bool for every slot of `image_sizes`, PROMPT str when the
           request has one (the pipeline's prompt stage supplies the default)}.
        Raises:
          RobotInputError naming the key that is missing, mis-shaped or non-finite.
        """
        if not isinstance(obs, Mapping):
            raise RobotInputError(
                f"a {self.name} request must be a map of its keys, got {type(obs).__name__}"
            )
        flat = flatten(obs)
        missing = [k for k in self.required_keys if k not in flat]
        if missing:
            raise RobotInputError(
                f"{self.name} request is missing {missing}; a {self.name} client sends "
                f"{sorted(self.describe())}"
            )
        parts = []
        for key, dim in zip(self.state, self.state_dims, strict=True):
            value = _numeric(key, flat[key])
            value = value.reshape(1) if value.ndim == 0 else value
            if value.shape != (dim,):
                raise RobotInputError(f"{key!r} has shape {value.shape}, expected ({dim},)")
            parts.append(value.astype(np.float64))
        out = {schema.OBS_STATE: np.concatenate(parts)[None]}
        by_slot = dict(self.cameras)
        for slot, size in image_sizes.items():
            key = by_slot.get(slot)
            height, width = (int(s) for s in size)
            if key is None or key not in flat:
                out[schema.image_key(slot)] = np.zeros((1, height, width, 3), np.uint8)
                out[schema.image_mask_key(slot)] = np.asarray(False)
                continue
            image = parse_image(key, flat[key], self.image_layout)
            out[schema.image_key(slot)] = images.resize_with_pad(image, height, width)[None]
            out[schema.image_mask_key(slot)] = np.asarray(True)
        prompt = flat.get(PROMPT_KEY)
        if prompt is not None:
            out[schema.PROMPT] = _text(prompt)
        return out

    # -- joint conventions, vectorized over leading axes ----------------------------------

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        """Robot state [..., S] → the model's joint convention (float64)."""
        state = np.asarray(state, np.float64)
        if self.joints == "aloha_pi":
            state = state * _ALOHA_FLIP
            state[..., _GRIPPERS] = _gripper_to_angular(state[..., _GRIPPERS])
        return state

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        """Robot actions [..., A] (training targets, RTC prefixes) → the model's convention."""
        actions = np.asarray(actions, np.float64)
        if self.joints == "aloha_pi":
            actions = actions * _ALOHA_FLIP
            actions[..., _GRIPPERS] = _gripper_from_angular_inv(actions[..., _GRIPPERS])
        return actions

    def actions_from_model(self, actions: np.ndarray) -> np.ndarray:
        """Model actions [..., A] → the robot's convention (the served actions)."""
        actions = np.asarray(actions, np.float64)
        if self.joints == "aloha_pi":
            actions = actions * _ALOHA_FLIP
            actions[..., _GRIPPERS] = _gripper_from_angular(actions[..., _GRIPPERS])
        return actions

    # -- training data --------------------------------------------------------------------

    def dataset_mapping(self, described: Mapping, overrides: Mapping | str | None = None) -> dict:
        """The standardize mapping (data/standardize.py) that reads this robot's recordings
        from a dataset with features `described` into the model's camera slots: each client
        key's first `dataset` candidate the dataset has (or `overrides[client key]`).

        Raises:
          RobotInputError naming the part no candidate feature matches.
        """
        candidates = {k: tuple(v) for k, v in self.dataset.items()}
        for key, value in _pairs(overrides or {}).items():
            candidates[key] = (value,) if isinstance(value, str) else tuple(value)

        def find(key, required=True):
            for feature in candidates.get(key, ()):
                if feature in described:
                    return feature
            if required:
                raise RobotInputError(
                    f"robot {self.name!r}: the dataset has none of {list(candidates.get(key, ()))}"
                    f" for {key!r}; name its feature with --config.robot.dataset={key}=FEATURE"
                    f" (features: {sorted(described)})"
                )
            return None

        cameras = {}
        for slot, key in self.cameras.items():
            feature = find(key, required=key not in self.optional_cameras)
            if feature is not None:
                cameras[slot] = feature
        state = [find(key) for key in self.state]
        prompt = find(PROMPT_KEY, required=False)
        return {
            "cameras": cameras,
            "state": state,
            "action": [find(ACTIONS_KEY)],
            "instruction": [prompt] if prompt else [],
        }


# ------------------------------------------------------------------------- conventions

# ALOHA ↔ π runtime (openpi's aloha_policy.py, adapt_to_pi): joints 1, 2, 8, 9 flip sign;
# the grippers (dims 6, 13) move between ALOHA's normalized linear position and the angle
# space π0 was pretrained in. Constants from the Interbotix / ALOHA code, as openpi uses.
_ALOHA_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], np.float64)
_GRIPPERS = [6, 13]
_PUPPET_OPEN, _PUPPET_CLOSED = 0.01844, 0.05800  # linear gripper positions (m)
_JOINT_OPEN, _JOINT_CLOSED = -0.6213, 1.4910  # gripper joint angles (rad)
_ANGLE_LO, _ANGLE_HI = 0.5476, 1.6296  # encoder counts 2405 .. 3110 in rad
_ARM, _HORN = 0.036, 0.022  # Interbotix gripper linkage (m)


def _gripper_to_angular(x):
    """ALOHA's normalized linear gripper value → π's normalized angle (state)."""
    linear = x * (_PUPPET_CLOSED - _PUPPET_OPEN) + _PUPPET_OPEN
    ratio = (_HORN**2 + linear**2 - _ARM**2) / (2 * _HORN * linear)
    angle = np.arcsin(np.clip(ratio, -1.0, 1.0))
    return (angle - _ANGLE_LO) / (_ANGLE_HI - _ANGLE_LO)


def _gripper_from_angular(x):
    """π's gripper output → ALOHA's normalized gripper joint (actions out)."""
    return (x + _ANGLE_LO - _JOINT_OPEN) / (_JOINT_CLOSED - _JOINT_OPEN)


def _gripper_from_angular_inv(x):
    """The inverse of `_gripper_from_angular` (actions in, for training targets)."""
    return x * (_JOINT_CLOSED - _JOINT_OPEN) + _JOINT_OPEN - _ANGLE_LO


def delta_action_mask(dims: Sequence[int], action_dim: int, where: str = "robot") -> np.ndarray:
    """openpi's `make_bool_mask(*dims)` → a bool mask [action_dim] (False past its length).

    (6, -1, 6, -1) → six True, one False, six True, one False: the joints of both ALOHA arms
    become deltas, the grippers stay absolute.
    """
    mask = []
    for d in dims:
        d = int(d)
        if d == 0:
            raise ValueError(f"{where}: delta_action_dims entries must be non-zero, got {dims}")
        mask += [d > 0] * abs(d)
    if len(mask) > action_dim:
        raise ValueError(
            f"{where}: delta_action_dims {tuple(dims)} covers {len(mask)} dims, more than the "
            f"{action_dim}-d action"
        )
    return np.asarray(mask + [False] * (action_dim - len(mask)), bool)


# ------------------------------------------------------------------------- images, values


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """A nested client dict as {"/"-joined path: leaf} (openpi's `flatten_dict`)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def _numeric(key: str, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as e:
        raise RobotInputError(f"{key!r} is not a rectangular array: {e}") from e
    if array.dtype.kind not in "biuf":
        raise RobotInputError(f"{key!r} must be numeric, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RobotInputError(f"{key!r} has non-finite values")
    return array


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if not isinstance(value, str):
        raise RobotInputError(f"{PROMPT_KEY!r} must be a string, got {type(value).__name__}")
    return value


def parse_image(key: str, image, layout: str) -> np.ndarray:
    """A client image → [h, w, 3] uint8: float in [0, 1] → uint8 (255·x, truncated), CHW →
    HWC per `layout` (module docstring)."""
    image = _numeric(key, image)
    if np.issubdtype(image.dtype, np.floating):
        image = (255 * image).astype(np.uint8)
    if image.ndim != 3:
        raise RobotInputError(f"{key!r} has shape {image.shape}; expected one image, 3 axes")
    if layout == "chw" or image.shape[0] == 3:
        image = np.transpose(image, (1, 2, 0))
    if image.shape[-1] != 3:
        raise RobotInputError(f"{key!r} has shape {image.shape}; expected 3 color channels")
    return np.ascontiguousarray(image.astype(np.uint8, copy=False))


# ------------------------------------------------------------------------- the registry

_ALOHA_DATASET = {
    # A LeRobot ALOHA recording after conversion (openpi's repack: cam_high ← top for the
    # simulation datasets; real ALOHA datasets keep the cam_* names), or an ALOHA RLDS.
    "images/cam_high": ("observation/image/top", "observation/image/cam_high",
                        "observation/cam_high"),
    "images/cam_left_wrist": ("observation/image/cam_left_wrist",
                              "observation/image/left_wrist", "observation/cam_left_wrist"),
    "images/cam_right_wrist": ("observation/image/cam_right_wrist",
                               "observation/image/right_wrist", "observation/cam_right_wrist"),
    "state": ("observation/state",),
    ACTIONS_KEY: ("action",),
    PROMPT_KEY: ("language_instruction",),
}  # fmt: skip
_ALOHA_CAMERAS = {
    "base_0_rgb": "images/cam_high",
    "left_wrist_0_rgb": "images/cam_left_wrist",
    "right_wrist_0_rgb": "images/cam_right_wrist",
}

ROBOTS: dict[str, RobotAdapter] = {
    # openpi's LIBERO client (examples/libero/main.py, LiberoInputs / LiberoOutputs): agent
    # view and wrist camera HWC uint8, 8-d state (eef position, axis-angle, gripper qpos),
    # 7-d actions. openpi's pi0_libero checkpoint was trained with extra delta actions
    # (delta_action_dims (6, -1)); pi05_libero and openpi's default LIBERO config without.
    "libero": RobotAdapter(
        name="libero",
        cameras={"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image"},
        state=("observation/state",),
        state_dims=(8,),
        action_dim=7,
        dataset={
            "observation/image": (
                "observation/image/image",
                "observation/image",
                "observation/image/agentview_image",
            ),
            "observation/wrist_image": (
                "observation/image/wrist_image",
                "observation/wrist_image",
                "observation/image/robot0_eye_in_hand_image",
            ),
            "observation/state": ("observation/state",),
            ACTIONS_KEY: ("action",),
            PROMPT_KEY: ("language_instruction",),
        },
    ),  # fmt: skip
    # openpi's ALOHA client (examples/aloha_real): cameras CHW uint8 under `images`, 14-d
    # joint state (per arm 6 joints + gripper), often no prompt; delta joint actions and the
    # π runtime's joint convention (AlohaInputs / AlohaOutputs with adapt_to_pi).
    "aloha": RobotAdapter(
        name="aloha",
        cameras=_ALOHA_CAMERAS,
        optional_cameras=("images/cam_left_wrist", "images/cam_right_wrist"),
        image_layout="chw",
        state=("state",),
        state_dims=(14,),
        action_dim=14,
        delta_action_dims=(6, -1, 6, -1),
        joints="aloha_pi",
        dataset=_ALOHA_DATASET,
    ),
    # openpi's ALOHA simulation client (examples/aloha_sim: `images/cam_high` only, CHW
    # 224²): the same adapter with absolute actions (openpi's pi0_aloha_sim).
    "aloha_sim": RobotAdapter(
        name="aloha_sim",
        cameras=_ALOHA_CAMERAS,
        optional_cameras=("images/cam_left_wrist", "images/cam_right_wrist"),
        image_layout="chw",
        state=("state",),
        state_dims=(14,),
        action_dim=14,
        joints="aloha_pi",
        dataset=_ALOHA_DATASET,
    ),
    # openpi's DROID client (examples/droid): exterior and wrist camera HWC uint8, joint
    # position [7] + gripper position [1], 8-d joint-velocity + gripper actions.
    "droid": RobotAdapter(
        name="droid",
        cameras={
            "base_0_rgb": "observation/exterior_image_1_left",
            "left_wrist_0_rgb": "observation/wrist_image_left",
        },
        state=("observation/joint_position", "observation/gripper_position"),
        state_dims=(7, 1),
        action_dim=8,
        dataset={
            "observation/exterior_image_1_left": (
                "observation/image/exterior_image_1_left",
                "observation/exterior_image_1_left",
            ),
            "observation/wrist_image_left": (
                "observation/image/wrist_image_left",
                "observation/wrist_image_left",
            ),
            "observation/joint_position": ("observation/joint_position",),
            "observation/gripper_position": ("observation/gripper_position",),
            ACTIONS_KEY: ("action",),
            PROMPT_KEY: ("language_instruction",),
        },
    ),  # fmt: skip
}

# config.robot fields (strings / lists / dicts, so they override from the command line).
CONFIG_FIELDS = (
    "name",
    "cameras",
    "optional_cameras",
    "image_layout",
    "state",
    "state_dims",
    "action_dim",
    "delta_action_dims",
    "joints",
    "default_prompt",
    "dataset",
)


def _plain(value):
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _ints(value) -> tuple[int, ...]:
    """A tuple of ints from a list or a "6,-1,6,-1" string ("" or "none": ())."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v and v.lower() != "none"]
    return tuple(int(v) for v in value)


def _pairs(value) -> dict:
    """{key: value} from a dict or a "key=value,key=value" string."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    out = {}
    for item in str(value).split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"expected key=value pairs separated by ',', got {item!r}")
        key, val = item.split("=", 1)
        out[key.strip()] = val.strip()
    return out


def from_config(robot_config) -> RobotAdapter | None:
    """The adapter `config.robot` declares: None when absent or `name` is empty (our own
    layout); a registry entry by `name`, with every non-empty field of the config overriding
    the entry's; or `name` not in the registry with every field given (a robot of your own).

    Raises:
      ValueError naming the unknown field, or the name and the fields a new robot needs.
    """
    if robot_config is None:
        return None
    fields = {k: v for k, v in _plain(robot_config).items()}
    unknown = sorted(set(fields) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"config.robot has unknown field(s) {unknown}; known: {CONFIG_FIELDS}")
    name = str(fields.pop("name", "") or "")
    if not name:
        return None
    base = ROBOTS.get(name)
    given = {k: v for k, v in fields.items() if v not in (None, "", [], {}, ()) and v != 0}
    if base is None:
        needed = ["cameras", "state", "state_dims", "action_dim"]
        lacking = [k for k in needed if k not in given]
        if lacking:
            raise ValueError(
                f"config.robot.name={name!r} is not a named robot ({sorted(ROBOTS)}); a robot of "
                f"your own needs config.robot.{', config.robot.'.join(lacking)}"
            )
        base = RobotAdapter(name=name, cameras={}, state=("state",), state_dims=(1,), action_dim=1)
    kwargs = {}
    for key, value in given.items():
        if key in ("state_dims", "delta_action_dims"):
            kwargs[key] = _ints(value)
        elif key in ("state", "optional_cameras"):
            kwargs[key] = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        elif key == "action_dim":
            kwargs[key] = int(value)
        elif key == "cameras":
            kwargs[key] = _pairs(value)
        elif key == "dataset":
            merged = dict(base.dataset)
            merged.update(
                {k: (v,) if isinstance(v, str) else tuple(v) for k, v in _pairs(value).items()}
            )
            kwargs[key] = merged
        else:
            kwargs[key] = str(value)
    return dataclasses.replace(base, **kwargs)
