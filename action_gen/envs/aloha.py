"""ALOHA sim (two ViperX 6-DoF arms; gym-aloha's MuJoCo models and task code) as a vector
env, and scripted demonstrations written as a LeRobot dataset.

Optional dependency: `pip install 'action_gen[sim]'` (gym-aloha on dm-control / MuJoCo; its
MJCF assets ship in the wheel). Rendering is headless: `MUJOCO_GL=egl` is set (unless the
caller chose a backend) before dm-control is first imported.

Tasks (gym-aloha's `AlohaTransferCube-v0` and `AlohaInsertion-v0`): 50 Hz control,
`EPISODE_STEPS` = 400 steps (the length of ACT's episodes and of the public scripted
datasets; gym-aloha registers 300, pass `max_episode_steps=300` for that). The env is
gym-aloha's: its MJCF model, its task classes
(`tasks/sim.py`: joint position control, gripper normalization, reward) stepped by
dm-control's `control.Environment` exactly as `gym_aloha.env.AlohaEnv` builds it; only
the observation is ours (gym-aloha's renders three 480x640 cameras every step; here only
the requested camera is rendered, at the requested size). Object poses are drawn as gym-aloha
draws them from the reset seed (`gym_aloha.utils.sample_box_pose(seed)`, resp.
`sample_insertion_pose(seed)`), so the same seed gives the same layout as
`gym.make("gym_aloha/AlohaTransferCube-v0").reset(seed=seed)`.

Action [A = 14] float32, absolute joint targets: [left arm joints (6), left gripper (1),
right arm joints (6), right gripper (1)]; grippers normalized to [0, 1] (0 closed, 1 open).

Observation, a dict:
  "state"            [14] float32, the joint positions in the action's layout (gripper
                     finger positions normalized the same way) = LeRobot's
                     `observation.state`. With `+env_state` in the spec, followed by the
                     objects' poses from the physics (the environment state, for
                     state-based policies): the cube [7] (xyz, quat wxyz), resp. the peg
                     [7] then the socket [7], so S = 21 (transfer cube) or 28 (insertion).
  "image/<camera>"   [h, w, 3] uint8 when the spec names a camera (gym-aloha's is "top",
                     480x640; the other cameras of the model are "angle", "front_close",
                     "left_pillar", "right_pillar").

Reward, success and stage (gym-aloha's `get_reward`, from the contacts after each step):
  transfer_cube  1 cube touched by the right gripper, 2 touched by it and off the table
                 (lifted), 3 touched by the left gripper, 4 touched by the left gripper and
                 off the table (transferred)
  insertion      1 both grippers touch their object (right: peg, left: socket),
                 2 both also off the table (lifted), 3 peg touches socket, neither on the
                 table, 4 peg touches the pin inside the socket
Success = the reward reaches `MAX_REWARD` (4), as gym-aloha's `terminated`. `info["stage"]`
is the highest reward reached so far in the episode (where a failed episode got stuck);
`info["collision"]` is always False (kept for the rollout contract).

Processes: every env runs in a spawned worker process (`RemoteAlohaEnv`: dm-control's EGL
renderer and TensorFlow cannot share a process); `AlohaEnv` itself is for processes that
never import TensorFlow.

Env spec strings (configs, `envs.make_vector_env`, demo collection):
  "aloha_transfer_cube"                      state [14] only
  "aloha_transfer_cube@top:480x640"          + the top camera at 480x640 (public layout)
  "aloha_insertion+env_state"                state [28] with object poses, no camera
  "aloha_insertion+env_state@top:240x320"    both

Scripted demonstrations (envs/aloha_scripted.py): end-effector waypoints executed in
gym-aloha's end-effector (mocap) model, whose joint trajectory (joint positions after each
step, gripper targets = the commanded normalized gripper openings) is replayed in the joint
env from the same layout; only episodes that succeed there are kept. Recorded like
`lerobot/aloha_sim_transfer_cube_scripted`: per step the observation before the action and
the joint command, 400 steps (the episode continues past its first success), fps 50. The
end-effector model is a planning instrument and two things in it are ours: its mocap welds
are made near-rigid (`EE_WELD_SOLIMP`) and the mocap bodies start on their weld targets
(`_place_mocap_on_weld`); the joint model that the demos are recorded in is unmodified.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from action_gen.envs import aloha_scripted, workers

SPEC_PREFIX = "aloha_"
ENV_STATE_FLAG = "+env_state"
FPS = 50
EPISODE_STEPS = 400
MAX_REWARD = 4
ACTION_DIM = 14
ROBOT_QPOS = 16  # 2 x (6 arm joints + 2 fingers); the objects' free joints follow
DEFAULT_CAMERA = "top"
DEFAULT_IMAGE_SIZE = (480, 640)  # (height, width), gym-aloha's and the public datasets'
STATE_KEY = "state"
IMAGE_PREFIX = "image/"
RECORD_PREFIX = "record/"  # frames rendered for a video only, never fed to the policy
SCRIPTED_STATS_FILE = "scripted_stats.json"
# Scripted attempts per requested demo before collection gives up.
MAX_ATTEMPTS_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class AlohaTask:
    """What differs between the two tasks.

    Attributes:
      name: "transfer_cube" or "insertion".
      joint_xml, ee_xml: gym-aloha's MJCF files (joint control, end-effector control).
      object_pose_dim: object qpos entries after the robot's 16 (7 per free body).
      instruction: the task text of the public LeRobot datasets.
      dataset_name: the public LeRobot dataset this collection reproduces.
      stages: reward level -> what it means.
    """

    name: str
    joint_xml: str
    ee_xml: str
    object_pose_dim: int
    instruction: str
    dataset_name: str
    stages: dict


TASKS = {
    "transfer_cube": AlohaTask(
        name="transfer_cube",
        joint_xml="bimanual_viperx_transfer_cube.xml",
        ee_xml="bimanual_viperx_end_effector_transfer_cube.xml",
        object_pose_dim=7,
        instruction="Pick up the cube with the right arm and transfer it to the left arm.",
        dataset_name="aloha_sim_transfer_cube_scripted",
        stages={
            0: "cube not touched",
            1: "touched by the right gripper",
            2: "lifted by the right gripper",
            3: "touched by the left gripper",
            4: "touched by the left gripper, off the table (success)",
        },
    ),
    "insertion": AlohaTask(
        name="insertion",
        joint_xml="bimanual_viperx_insertion.xml",
        ee_xml="bimanual_viperx_end_effector_insertion.xml",
        object_pose_dim=14,
        instruction="Insert the peg into the socket.",
        dataset_name="aloha_sim_insertion_scripted",
        stages={
            0: "peg and socket not both touched",
            1: "both grippers touch their object",
            2: "both objects lifted",
            3: "peg touches the socket, both off the table",
            4: "peg touches the pin in the socket (success)",
        },
    ),
}


# ----------------------------------------------------------------------------- specs


def is_spec(name: str) -> bool:
    """Whether `name` is an ALOHA env spec ("aloha_<task>...")."""
    return name.startswith(SPEC_PREFIX)


def parse_image_flag(value: str) -> tuple[str, tuple[int, int]]:
    """'top:480x640' -> ('top', (480, 640)) (HEIGHTxWIDTH); 'top:96' -> ('top', (96, 96))."""
    match = re.fullmatch(r"([A-Za-z0-9_]+):(\d+)(?:x(\d+))?", value.strip())
    if not match or int(match.group(2)) <= 0 or (match.group(3) and int(match.group(3)) <= 0):
        raise ValueError(
            f"image option must be CAMERA:HEIGHTxWIDTH or CAMERA:SIZE (e.g. top:480x640), "
            f"got {value!r}"
        )
    height = int(match.group(2))
    width = int(match.group(3)) if match.group(3) else height
    return match.group(1), (height, width)


def parse_spec(spec: str) -> dict[str, Any]:
    """'aloha_insertion+env_state@top:240x320' -> {task: 'insertion', camera: 'top',
    image_size: (240, 320), environment_state: True}."""
    if not is_spec(spec):
        raise ValueError(f"not an ALOHA env spec (want 'aloha_<task>...'): {spec!r}")
    body, camera, size = spec.removeprefix(SPEC_PREFIX), None, None
    if "@" in body:
        body, view = body.split("@", 1)
        camera, size = parse_image_flag(view)
    environment_state = body.endswith(ENV_STATE_FLAG)
    task = body.removesuffix(ENV_STATE_FLAG)
    if task not in TASKS:
        known = sorted(SPEC_PREFIX + t for t in TASKS)
        raise ValueError(f"unknown ALOHA task {task!r} in env spec {spec!r}; known: {known}")
    return {
        "task": task,
        "camera": camera,
        "image_size": size,
        "environment_state": environment_state,
    }


def make_spec(
    task: str,
    camera: str | None = None,
    image_size: tuple[int, int] | None = None,
    environment_state: bool = False,
) -> str:
    """Inverse of `parse_spec`."""
    task = task.removeprefix(SPEC_PREFIX)
    if task not in TASKS:
        known = sorted(SPEC_PREFIX + t for t in TASKS)
        raise ValueError(f"unknown ALOHA task {task!r}; known: {known}")
    spec = SPEC_PREFIX + task + (ENV_STATE_FLAG if environment_state else "")
    if camera is None:
        return spec
    height, width = image_size or DEFAULT_IMAGE_SIZE
    return f"{spec}@{camera}:{int(height)}x{int(width)}"


# ----------------------------------------------------------------------------- simulator


def _import_sim():
    """dm-control's `control` and `mujoco` and gym-aloha's modules (the [sim] extra)."""
    # Headless rendering; must be set before dm-control (and mujoco) is first imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import mujoco
        from dm_control.rl import control
        from gym_aloha import constants, utils
        from gym_aloha.tasks import sim, sim_end_effector
    except ImportError as e:
        raise ImportError(
            f"gym-aloha is not installed ({e}); install the extra: pip install 'action_gen[sim]'"
        ) from e
    return mujoco, control, constants, utils, sim, sim_end_effector


def object_poses(task: str, seed: int) -> np.ndarray:
    """The objects' start poses [7] (cube) or [14] (peg, socket) of episode `seed`, drawn as
    gym-aloha's AlohaEnv.reset draws them. Imports no simulator (safe beside TensorFlow)."""
    try:
        from gym_aloha import utils
    except ImportError as e:
        raise ImportError(
            f"gym-aloha is not installed ({e}); install the extra: pip install 'action_gen[sim]'"
        ) from e
    if task == "transfer_cube":
        return np.asarray(utils.sample_box_pose(int(seed)), np.float64)
    if task == "insertion":
        return np.concatenate(utils.sample_insertion_pose(int(seed))).astype(np.float64)
    raise ValueError(f"unknown ALOHA task {task!r}; known: {sorted(TASKS)}")


@functools.cache
def _task_classes() -> dict[tuple[str, str], type]:
    """(task, "joint" | "ee") -> gym-aloha's task class with our reset and observation.

    Reset: the object poses come from the instance (`object_pose`), not from gym-aloha's
    module-level BOX_POSE (joint tasks) or an unseeded draw (end-effector tasks). The
    observation holds the physics state only; cameras are rendered on request.
    """
    *_, sim, sim_ee = _import_sim()
    from dm_control.suite import base

    class JointTaskMixin:
        object_pose: np.ndarray | None = None

        def initialize_episode(self, physics):
            # gym-aloha's own reset (arm start pose, controls, object qpos) reads the pose
            # from its module global; set it from this instance right before.
            sim.BOX_POSE[0] = self.object_pose
            super().initialize_episode(physics)

        def get_observation(self, physics):
            return {"qpos": self.get_qpos(physics), "env_state": self.get_env_state(physics)}

    class EndEffectorTaskMixin:
        object_pose: np.ndarray | None = None

        def initialize_episode(self, physics):
            self.initialize_robots(physics)
            physics.data.qpos[ROBOT_QPOS:] = self.object_pose
            _place_mocap_on_weld(physics)
            base.Task.initialize_episode(self, physics)

        def get_observation(self, physics):
            return {
                "qpos": self.get_qpos(physics),
                "env_state": self.get_env_state(physics),
                "mocap_pose_left": np.concatenate(
                    [physics.data.mocap_pos[0], physics.data.mocap_quat[0]]
                ),
                "mocap_pose_right": np.concatenate(
                    [physics.data.mocap_pos[1], physics.data.mocap_quat[1]]
                ),
            }

    return {
        ("transfer_cube", "joint"): type(
            "TransferCubeJointTask", (JointTaskMixin, sim.TransferCubeTask), {}
        ),
        ("insertion", "joint"): type("InsertionJointTask", (JointTaskMixin, sim.InsertionTask), {}),
        ("transfer_cube", "ee"): type(
            "TransferCubeEETask", (EndEffectorTaskMixin, sim_ee.TransferCubeEndEffectorTask), {}
        ),
        ("insertion", "ee"): type(
            "InsertionEETask", (EndEffectorTaskMixin, sim_ee.InsertionEndEffectorTask), {}
        ),
    }


# Weld impedance of the end-effector models' mocap welds: gym-aloha's (solimp .25 .25,
# solref .01) lets the grippers lag their targets by up to ~70 degrees in fast moves under
# MuJoCo 3, so scripted grasps land anywhere; near-rigid welds make them land where planned.
# Only the planning model changes: the demonstrations are replayed in the unmodified joint
# model, and only what succeeds there is kept.
EE_WELD_SOLIMP = (0.95, 0.99, 0.001, 0.5, 2.0)
EE_WELD_SOLREF = (0.01, 1.0)


def _stiffen_welds(physics) -> None:
    """Sets every weld's impedance to EE_WELD_SOLIMP / EE_WELD_SOLREF (see there)."""
    import mujoco

    model = physics.model
    welds = model.eq_type == mujoco.mjtEq.mjEQ_WELD
    model.eq_solimp[welds] = EE_WELD_SOLIMP
    model.eq_solref[welds] = EE_WELD_SOLREF


def _place_mocap_on_weld(physics) -> None:
    """Moves each mocap body to where its weld holds it given the arm's current pose.

    The end-effector models weld `mocap_<side>` to `vx300s_<side>/gripper_link` without a
    `relpose`, so the weld keeps the offset they have at qpos0: the gripper link sits
    0.135 m behind the mocap body along the fingers, i.e. the mocap body is a point between
    the fingertips (a tool centre point). gym-aloha's start mocap positions are the gripper
    links' own positions, so the arms would lurch 0.135 m on the first step; placing the
    mocap bodies on their weld targets (same orientation) starts the episode at rest.
    """
    import mujoco

    model, data = physics.model, physics.data
    mujoco.mj_kinematics(model.ptr, data.ptr)
    for weld in np.flatnonzero(model.eq_type == mujoco.mjtEq.mjEQ_WELD):
        mocap = model.body_mocapid[model.eq_obj1id[weld]]
        link = model.eq_obj2id[weld]
        rotation = np.zeros(9)
        mujoco.mju_quat2Mat(rotation, data.mocap_quat[mocap])
        offset = rotation.reshape(3, 3) @ model.eq_data[weld, 3:6]  # link in mocap frame
        data.mocap_pos[mocap] = data.xpos[link] - offset


class PhysicsUnstable(RuntimeError):
    """The simulation's state became invalid during a step (dm-control's PhysicsError)."""


class _Simulation:
    """One gym-aloha model stepped by dm-control's control.Environment, as gym-aloha's
    AlohaEnv builds it (control step DT = 0.02 s, no time limit)."""

    def __init__(self, task: str, kind: str):
        mujoco, control, constants, *_ = _import_sim()
        spec = TASKS[task]
        xml = spec.joint_xml if kind == "joint" else spec.ee_xml
        self.physics = mujoco.Physics.from_xml_path(str(constants.ASSETS_DIR / xml))
        if kind == "ee":
            _stiffen_welds(self.physics)
        self.task = _task_classes()[(task, kind)]()
        self.env = control.Environment(
            self.physics,
            self.task,
            float("inf"),
            control_timestep=constants.DT,
            n_sub_steps=None,
            flat_observation=False,
        )

    def reset(self, pose: np.ndarray) -> dict[str, np.ndarray]:
        self.task.object_pose = np.asarray(pose, np.float64)
        return dict(self.env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """(observation, reward) after `action`. Raises `PhysicsUnstable` when MuJoCo's
        state became invalid (e.g. mjWARN_BADQACC: a policy drove the arms into a
        configuration the solver cannot integrate)."""
        _, control, *_ = _import_sim()
        try:
            step = self.env.step(np.asarray(action, np.float64))
        except control.PhysicsError as e:
            raise PhysicsUnstable(str(e)) from None
        return dict(step.observation), float(step.reward)

    def render(self, camera: str, size: tuple[int, int]) -> np.ndarray:
        height, width = size
        return np.asarray(self.physics.render(height=height, width=width, camera_id=camera))


def shadow_map_size(image_height: int) -> int:
    """Shadow map resolution for images `image_height` rows tall: the model's 4096 at
    gym-aloha's 480 rows, proportionally less below (at least 512). A frame smaller than
    480x640 gets shadows as sharp relative to its pixels, at a fraction of the cost
    (software rendering: 48x64 frames render ~1.5x faster)."""
    return int(min(4096, max(512, 4096 * image_height // DEFAULT_IMAGE_SIZE[0])))


class AlohaEnv:
    """One ALOHA sim task in joint space: seeded reset, state (+ image) observations.

    Observations are dicts {"state": [S] float32, "image/<camera>": [h, w, 3] uint8} (module
    docstring). With `record=True` the camera only films: its frame is "record/<camera>".
    dm-control with its EGL backend and TensorFlow cannot share a process (importing either
    after the other crashes, rendering or not): build one in a process that never imports
    TensorFlow, or through `make_env`, which runs it in a worker process.
    """

    def __init__(
        self,
        task: str,
        camera: str | None = None,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        environment_state: bool = False,
        record: bool = False,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown ALOHA task {task!r}; known: {sorted(TASKS)}")
        self.task = task
        self.camera = camera
        self.image_size = tuple(int(s) for s in image_size)
        self.environment_state = bool(environment_state)
        self.record = bool(record)
        self.max_episode_steps = EPISODE_STEPS
        self._sim = _Simulation(task, "joint")
        model = self._sim.physics.model
        cameras = [model.id2name(i, "camera") for i in range(model.ncam)]
        if camera is not None and camera not in cameras:
            raise ValueError(f"unknown ALOHA camera {camera!r}; known: {cameras}")
        model.vis.quality.shadowsize = shadow_map_size(self.image_size[0])
        self._ee_sim = None  # built on the first scripted demo
        self._last: dict[str, np.ndarray] | None = None  # the last valid observation

    def _observe(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = raw["qpos"]
        if self.environment_state:
            state = np.concatenate([state, raw["env_state"]])
        observation = {STATE_KEY: state.astype(np.float32)}
        if self.camera is not None:
            prefix = RECORD_PREFIX if self.record else IMAGE_PREFIX
            observation[prefix + self.camera] = self._sim.render(self.camera, self.image_size)
        return observation

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self._last = self._observe(self._sim.reset(object_poses(self.task, seed)))
        return self._last

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool]:
        """Returns (observation, reward (gym-aloha's 0..4), success, unstable).

        `unstable`: the physics became invalid at this step (`PhysicsUnstable`); the episode
        ends there as a failure, with the last valid observation and reward 0, and the next
        `reset` starts a valid one (as an evaluation harness must: one diverging episode
        does not end the others). The step limit is the vector env's.
        """
        action = np.asarray(action, np.float64).reshape(ACTION_DIM)
        try:
            raw, reward = self._sim.step(action)
        except PhysicsUnstable as e:
            logging.warning("ALOHA %s: episode ended, physics unstable: %s", self.task, e)
            return self._last, 0.0, False, True
        self._last = self._observe(raw)
        return self._last, reward, reward >= MAX_REWARD, False

    def scripted_demo(self, seed: int) -> dict[str, Any]:
        """One scripted demonstration from the layout of `seed` (module docstring).

        Returns:
          {"episode": {"observation": {"state": [L, S], "image/<camera>": [L, h, w, 3]},
           "action": [L, 14], "reward": [L], "language_instruction": str,
           "episode_metadata": {"seed": int64}},
           "ee_success", "replay_success": bool, "ee_stage", "replay_stage": int (highest
           reward reached), "seconds": float}, with L = EPISODE_STEPS; the observation at
          step t is the one before action t, the reward the one after it.
        """
        tic = time.perf_counter()
        if self._ee_sim is None:
            self._ee_sim = _Simulation(self.task, "ee")
        pose = object_poses(self.task, seed)
        first = self._ee_sim.reset(pose)
        plan = aloha_scripted.plan_end_effector_actions(
            self.task,
            first["mocap_pose_left"],
            first["mocap_pose_right"],
            first["env_state"],
            EPISODE_STEPS,
        )
        commands, ee_rewards = joint_commands_of(self._ee_sim, plan)
        observation = self.reset(seed)
        observations, rewards = [], []
        for command in commands:
            observations.append(observation)
            observation, reward, _, _ = self.step(command)
            rewards.append(reward)
        episode = {
            "observation": {k: np.stack([o[k] for o in observations]) for k in observations[0]},
            "action": commands.astype(np.float32),
            "reward": np.asarray(rewards, np.float32),
            "language_instruction": TASKS[self.task].instruction,
            "episode_metadata": {"seed": np.int64(seed)},
        }
        return {
            "episode": episode,
            "ee_success": bool(max(ee_rewards) >= MAX_REWARD),
            "ee_stage": int(max(ee_rewards)),
            "replay_success": bool(max(rewards) >= MAX_REWARD),
            "replay_stage": int(max(rewards)),
            "seconds": time.perf_counter() - tic,
        }

    def close(self):
        pass


def joint_commands_of(ee_sim: _Simulation, plan: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Runs end-effector actions `plan` [L, 16] in the (reset) end-effector simulation and
    returns the joint-space commands [L, 14] that replay it, and the rewards [L].

    Command t = the arm joint positions reached after action t, with the grippers' entries
    replaced by action t's commanded openings (normalized, what the joint env's gripper
    actuators take; the fingers' measured positions lag the command and would never close
    a grasp fully).
    """
    if plan.ndim != 2 or plan.shape[1] != aloha_scripted.EE_ACTION_DIM:
        raise ValueError(f"end-effector plan must be [L, 16], got {plan.shape}")
    commands, rewards = [], []
    for action in plan:
        raw, reward = ee_sim.step(action)
        command = np.array(raw["qpos"], np.float64)
        command[6], command[13] = action[7], action[15]  # left, right gripper targets
        commands.append(command)
        rewards.append(reward)
    return np.stack(commands), rewards


# ----------------------------------------------------------------------------- workers


class RemoteAlohaEnv(workers.WorkerEnv):
    """An AlohaEnv in a spawned worker process, with the same methods (envs/workers.py:
    dm-control loads its EGL renderer at import, and it and TensorFlow cannot share a
    process; workers also let several simulators run and render in parallel)."""

    label = "ALOHA"
    crash_hint = "dm-control in a process that imported TensorFlow"

    def __init__(self, **kwargs):
        super().__init__(AlohaEnv, **kwargs)

    def scripted_demo(self, seed: int) -> dict[str, Any]:
        return self._call("scripted_demo", int(seed))


def make_env(
    task: str,
    camera: str | None = None,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    environment_state: bool = False,
    record: bool = False,
) -> RemoteAlohaEnv:
    """An AlohaEnv in its own worker process (RemoteAlohaEnv: see there why)."""
    if task not in TASKS:
        raise ValueError(f"unknown ALOHA task {task!r}; known: {sorted(TASKS)}")
    return RemoteAlohaEnv(
        task=task,
        camera=camera,
        image_size=tuple(int(s) for s in image_size),
        environment_state=environment_state,
        record=record,
    )


# ----------------------------------------------------------------------------- vector env


class AlohaVecEnv:
    """N ALOHA envs behind the `envs.obstacle.ObstacleVecEnv` contract.

    `reset(seed=[N ints])`, `step(actions [N, 14])`; no auto-reset: an env that finished
    (success, or `max_episode_steps`) is frozen, keeps returning its last observation and
    ignores its actions. Observations are dicts of [N, ...] arrays ({"state": [N, S],
    "image/<camera>": [N, h, w, 3] uint8}); `info` carries [N] arrays `success` (reward
    reached 4, sticky), `collision` (always False, kept for the rollout contract) and
    `stage` (int, the highest reward reached so far: where a failed episode got stuck; see
    the module docstring), `physics_unstable` (the episode ended early, a failure, because
    MuJoCo's state became invalid: `AlohaEnv.step`), and `instruction` [N] at reset.
    `num_stages` = 4.

    `record=(camera, (h, w))` films a state-observation env: observations add
    "record/<camera>" frames for a rollout video (never fed to the policy).
    """

    num_stages = MAX_REWARD

    def __init__(
        self,
        num_envs: int,
        task: str,
        *,
        camera: str | None = None,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        environment_state: bool = False,
        max_episode_steps: int | None = None,
        record: tuple[str, tuple[int, int]] | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if record is not None:
            if camera is not None:
                raise ValueError("record= films a state-observation env; this one has a camera")
            camera, image_size = record
        self.num_envs = num_envs
        self.envs = [
            make_env(task, camera, image_size, environment_state, record is not None)
            for _ in range(num_envs)
        ]
        self.task = task
        self.max_episode_steps = min(EPISODE_STEPS, max_episode_steps or EPISODE_STEPS)
        self.instruction = TASKS[task].instruction
        self.stage_names = dict(TASKS[task].stages)  # stage -> what it means
        self._obs: list[dict] = []
        self._done = np.ones(num_envs, bool)
        self._success = np.zeros(num_envs, bool)
        self._stage = np.zeros(num_envs, np.int64)
        self._steps = np.zeros(num_envs, np.int64)
        self._unstable = np.zeros(num_envs, bool)

    def _stack(self) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in self._obs]) for k in self._obs[0]}

    def _info(self) -> dict[str, np.ndarray]:
        return {
            "success": self._success.copy(),
            "collision": np.zeros(self.num_envs, bool),
            "stage": self._stage.copy(),
            "physics_unstable": self._unstable.copy(),
        }

    def reset(self, seed) -> tuple[dict, dict]:
        seeds = np.asarray(seed, np.int64).reshape(-1)
        if seeds.shape[0] != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} seeds, got {seeds.shape[0]}")
        self._obs = workers.call_all(self.envs, "reset", [(int(s),) for s in seeds])
        self._done[:] = False
        self._success[:] = False
        self._stage[:] = 0
        self._steps[:] = 0
        self._unstable[:] = False
        info = self._info()
        info["instruction"] = np.asarray([self.instruction] * self.num_envs, dtype=object)
        return self._stack(), info

    def step(self, actions) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(actions, np.float32)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(
                f"step needs [{self.num_envs}, {ACTION_DIM}] actions, got {actions.shape}"
            )
        reward = np.zeros(self.num_envs, np.float32)
        truncated = np.zeros(self.num_envs, bool)
        running = np.flatnonzero(~self._done)
        results = workers.call_all(
            [self.envs[i] for i in running], "step", [(actions[i],) for i in running]
        )
        for i, (obs, rew, success, unstable) in zip(running, results, strict=True):
            self._obs[i], reward[i] = obs, rew
            self._steps[i] += 1
            self._stage[i] = max(self._stage[i], int(rew))
            self._success[i] |= success
            self._unstable[i] |= unstable
            truncated[i] = (self._steps[i] >= self.max_episode_steps and not success) or unstable
            self._done[i] = success or truncated[i]
        return (
            self._stack(),
            reward,
            self._success.copy(),
            self._done & ~self._success,
            self._info(),
        )

    def close(self):
        for env in self.envs:
            env.close()


def make_vector_env(spec: str, num_envs: int, **kwargs) -> AlohaVecEnv:
    """An AlohaVecEnv from a spec string ("aloha_transfer_cube@top:480x640").

    kwargs: `max_episode_steps`, and `record="top:240x320"` to film a state-observation
    env (an image env films itself: its "image/<camera>" frames are recorded).
    """
    parsed = parse_spec(spec)
    if kwargs.get("record") is not None:
        if parsed["camera"] is not None:
            kwargs.pop("record")  # the policy's own camera frames are the recording
        else:
            kwargs["record"] = parse_image_flag(kwargs["record"])
    else:
        kwargs.pop("record", None)
    image = {} if parsed["camera"] is None else {"image_size": parsed["image_size"]}
    return AlohaVecEnv(
        num_envs,
        parsed["task"],
        camera=parsed["camera"],
        environment_state=parsed["environment_state"],
        **image,
        **kwargs,
    )


# ----------------------------------------------------------------------------- demos


def scripted_demos(
    spec: str, num_episodes: int, seed: int, *, num_workers: int = 1, stats: dict | None = None
) -> Iterator[dict]:
    """Successful scripted demonstrations of `spec`, one episode dict at a time.

    Attempt j uses seed `obstacle.episode_seeds(seed, .)[j]` (prefix stable); an attempt
    is kept when its joint-space replay succeeds, until `num_episodes` are kept.
    `num_workers` simulator processes run attempts in parallel (kept in seed order).

    Args:
      stats: if given, filled as it runs: attempts, ee_successes, replay_successes (all
        attempts), kept_seeds, ee_stages / replay_stages (per attempt), seconds (per
        attempt, wall time in its worker).
    Yields:
      `AlohaEnv.scripted_demo(.)["episode"]` of each kept attempt.
    Raises:
      RuntimeError: when `MAX_ATTEMPTS_FACTOR * num_episodes` attempts do not suffice.
    """
    from action_gen import cli
    from action_gen.envs.obstacle import episode_seeds

    parsed = parse_spec(spec)
    seeds = [int(s) for s in episode_seeds(seed, MAX_ATTEMPTS_FACTOR * num_episodes)]
    stats = {} if stats is None else stats
    stats.update(
        attempts=0, ee_successes=0, replay_successes=0, kept_seeds=[], ee_stages=[],
        replay_stages=[], seconds=[],
    )  # fmt: skip
    image = {} if parsed["camera"] is None else {"image_size": parsed["image_size"]}
    envs = [
        make_env(
            parsed["task"],
            parsed["camera"],
            environment_state=parsed["environment_state"],
            **image,
        )
        for _ in range(max(1, num_workers))
    ]
    bar = cli.progress(num_episodes, f"scripted demos {parsed['task']}")
    try:
        for first in range(0, len(seeds), len(envs)):
            if len(stats["kept_seeds"]) == num_episodes:
                break
            batch = seeds[first : first + len(envs)]
            results = workers.call_all(envs[: len(batch)], "scripted_demo", [(s,) for s in batch])
            for episode_seed, result in zip(batch, results, strict=True):
                if len(stats["kept_seeds"]) == num_episodes:
                    break
                stats["attempts"] += 1
                stats["ee_successes"] += result["ee_success"]
                stats["replay_successes"] += result["replay_success"]
                stats["ee_stages"].append(result["ee_stage"])
                stats["replay_stages"].append(result["replay_stage"])
                stats["seconds"].append(round(result["seconds"], 3))
                if result["replay_success"]:
                    stats["kept_seeds"].append(episode_seed)
                    bar.update(1)
                    yield result["episode"]
        if len(stats["kept_seeds"]) < num_episodes:
            raise RuntimeError(
                f"the scripted {parsed['task']} policy succeeded after replay on only "
                f"{len(stats['kept_seeds'])} of {stats['attempts']} attempts; wanted "
                f"{num_episodes}"
            )
    finally:
        bar.close()
        for worker in envs:
            worker.close()


def dataset_name(spec: str) -> str:
    """The LeRobot dataset directory name of a collection: the public dataset's name
    ("aloha_sim_transfer_cube_scripted") plus what differs from its layout
    ("_env_state", "_<camera><h>x<w>", "_state_only")."""
    parsed = parse_spec(spec)
    name = TASKS[parsed["task"]].dataset_name
    if parsed["environment_state"]:
        name += "_env_state"
    if parsed["camera"] is None:
        return name + ("" if parsed["environment_state"] else "_state_only")
    if (parsed["camera"], parsed["image_size"]) != (DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE):
        height, width = parsed["image_size"]
        name += f"_{parsed['camera']}{height}x{width}"
    return name


def collect_to_lerobot(
    spec: str, out_dir: str, *, num_episodes: int, seed: int, num_workers: int = 1
) -> str:
    """Scripted demos of `spec` written as a LeRobot v3.0 dataset at
    `out_dir/<dataset_name(spec)>` (`observation.state`, `action`, camera frames as
    `observation.images.<camera>` video, fps 50, the task text; the layout of
    `lerobot/aloha_sim_*_scripted`). The scripted policy's success rates (end-effector
    rollout and joint replay, per attempt) and the collection settings go to
    `<that directory>/scripted_stats.json`. Returns the dataset directory."""
    import shutil

    from action_gen.data import lerobot_write

    root = pathlib.Path(out_dir) / dataset_name(spec)
    if root.exists():
        raise FileExistsError(f"{root} exists; remove it or write to another directory")
    # Written next to its final place and renamed when complete: an interrupted collection
    # leaves no dataset behind.
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    stats: dict = {}
    episodes = scripted_demos(spec, num_episodes, seed, num_workers=num_workers, stats=stats)
    try:
        lerobot_write.write_lerobot_dataset(episodes, staging, fps=FPS, robot_type="aloha")
        attempts = max(stats["attempts"], 1)
        stats.update(
            ee_success_rate=stats["ee_successes"] / attempts,
            replay_success_rate=stats["replay_successes"] / attempts,
            seconds_per_attempt=float(np.mean(stats["seconds"])),
            spec=spec,
            seed=seed,
            episodes=num_episodes,
        )
        (staging / SCRIPTED_STATS_FILE).write_text(json.dumps(stats, indent=2))
        os.replace(staging, root)
    except BaseException:
        episodes.close()  # stops the simulator workers now, not when collected
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.fspath(root)
