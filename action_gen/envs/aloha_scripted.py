"""Scripted bimanual plans for the ALOHA sim tasks, as end-effector waypoints.

A plan is a pure function of an episode's first observation: the two grippers' mocap poses
and the objects' poses (the physics' free-joint qpos, [x, y, z, qw, qx, qy, qz] each). Each
arm gets a list of waypoints (control step, gripper position xyz, orientation quaternion,
gripper opening in [0, 1], 0 = closed); between waypoints the targets are interpolated
linearly (quaternions by normalized linear interpolation, which is exact enough for the
<= 90 degree turns used here), giving one end-effector action per control step:

  action_t = [left xyz (3), left quat wxyz (4), left gripper (1),
              right xyz (3), right quat wxyz (4), right gripper (1)]      [16]

executed open loop in the end-effector (mocap) environment (envs/aloha.py), whose joint
trajectory is then replayed in the joint-space environment.

Frames: world x points from the left arm to the right arm (their bases sit at
x = -/+0.469 on the line y = 0.5), z up; the table top is z = 0. A mocap target is the
gripper's tool point, inside the jaws about 1.6 cm behind the fingertips (0.135 m ahead of
the gripper link; envs/aloha.py). Orientations are relative to the start
orientation (identity), where the fingers point at the other arm (left: +x, right: -x)
and the jaws open horizontally.

The timings leave the arms time to settle: the welds that drive the end-effector model
follow fast moves with a lag, and a grasp closed before the jaws are in place, or a lift
started before the grip has built up, slips.
"""

from __future__ import annotations

import dataclasses

import numpy as np

EE_ACTION_DIM = 16  # per arm: xyz (3), quaternion wxyz (4), gripper (1)
OPEN, CLOSED = 1.0, 0.0
ARM_BASE_XY = {"left": np.array([-0.469, 0.5]), "right": np.array([0.469, 0.5])}


@dataclasses.dataclass(frozen=True)
class Waypoint:
    """One arm's target at control step `step`: xyz [3], quat [4] (wxyz), gripper in [0, 1]."""

    step: int
    xyz: np.ndarray
    quat: np.ndarray
    gripper: float


def axis_angle_quaternion(axis, degrees: float) -> np.ndarray:
    """The unit quaternion [4] (w, x, y, z) of a rotation by `degrees` about `axis` [3]."""
    axis = np.asarray(axis, np.float64)
    axis = axis / np.linalg.norm(axis)
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * axis])


def quaternion_multiply(a, b) -> np.ndarray:
    """Hamilton product a * b of quaternions [4] (w, x, y, z): rotate by b, then by a."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def interpolate_waypoints(waypoints: list[Waypoint], num_steps: int) -> np.ndarray:
    """Per-step targets [num_steps, 8] (xyz, quat, gripper) of one arm.

    Step t lies between the waypoints around it; positions and gripper are interpolated
    linearly, quaternions too and then renormalized. Steps after the last waypoint hold it.
    The first waypoint must be at step 0 and steps must increase.
    """
    steps = np.array([w.step for w in waypoints], np.float64)
    if steps[0] != 0 or np.any(np.diff(steps) <= 0):
        raise ValueError(f"waypoint steps must start at 0 and increase, got {steps.tolist()}")
    values = np.stack(
        [np.concatenate([w.xyz, w.quat, [w.gripper]]).astype(np.float64) for w in waypoints]
    )
    t = np.arange(num_steps, dtype=np.float64)
    out = np.stack([np.interp(t, steps, values[:, j]) for j in range(values.shape[1])], axis=1)
    out[:, 3:7] /= np.linalg.norm(out[:, 3:7], axis=1, keepdims=True)
    return out


def pick_quaternion(side: str, pitch_degrees: float, toward=None) -> np.ndarray:
    """Gripper orientation [4] pointing the fingers `pitch_degrees` below horizontal, towards
    the other arm; the jaws stay horizontal, closing across the objects' long (x) axis.

    With `toward` (a point [>= 2], x y used) the fingers are also turned about the vertical
    so that they point from the arm's base at that point: the orientation then lies in the
    arm's own vertical plane, which the waist, shoulder, elbow and wrist-angle joints reach
    with the forearm-roll and wrist-rotate joints at zero. Without it an off-axis target asks
    the two roll joints to cancel the waist's turn, which they can only do far from zero, and
    the wrist starts at a pitch singularity (wrist angle -0.3 rad): passing it, the arm ends
    on one of two joint-space branches (roll, pitch, rotate) vs (roll + pi, -pitch,
    rotate + pi) depending on where the object lies — the same gripper pose, but joint
    targets that differ by pi, a mixture no joint-space policy can average over.
    """
    # At the start orientation (identity) the left fingers point along +x, the right along -x:
    # pitching them down is a rotation about +y for the left arm and -y for the right.
    sign = 1.0 if side == "left" else -1.0
    quat = axis_angle_quaternion([0, 1, 0], sign * pitch_degrees)
    if toward is None:
        return quat
    dx, dy = np.asarray(toward, np.float64)[:2] - ARM_BASE_XY[side]
    # The fingers' horizontal direction (sign, 0) turned by `yaw` about +z is
    # (sign cos yaw, sign sin yaw); it should be along (dx, dy).
    yaw = np.degrees(np.arctan2(sign * dy, sign * dx))
    return quaternion_multiply(axis_angle_quaternion([0, 0, 1], yaw), quat)


def transfer_cube_waypoints(
    left_start: np.ndarray, right_start: np.ndarray, cube_pose: np.ndarray
) -> tuple[list[Waypoint], list[Waypoint]]:
    """The right arm picks the cube and carries it to a hand-over point above the table's
    centre; the left arm, its jaws turned vertical, grasps the part that sticks out; the
    right arm lets go and both back away, the cube held in the air by the left gripper.

    Args:
      left_start, right_start: the grippers' start mocap poses [7] (xyz, quat).
      cube_pose: the cube's pose [7] at reset (its centre drops to z = 0.02 on the table).
    """
    cube = np.asarray(cube_pose[:3], np.float64)
    grasp = np.array([cube[0], cube[1], 0.03])  # tool point 1 cm above the cube's centre
    # Approach and grasp with the fingers turned towards the cube from the arm's base (see
    # pick_quaternion: the wrist's roll joints stay near zero, so every demo ends on the
    # same joint-space branch); the carry turns them back to the hand-over orientation.
    # The cube is symmetric: the jaws close on it at the turned angle (< 25 degrees).
    reach = pick_quaternion("right", 55, toward=cube)
    pick = pick_quaternion("right", 55)
    receive = axis_angle_quaternion([1, 0, 0], 90)  # left jaws close vertically
    handover = np.array([0.0, 0.5, 0.25])
    receive_at = handover + [0.02, 0, -0.02]
    left_aside = handover + [-0.1, 0, -0.02]
    right = [
        Waypoint(0, right_start[:3], right_start[3:], CLOSED),
        Waypoint(80, grasp + [0, 0, 0.09], reach, OPEN),  # above the cube, jaws open
        Waypoint(125, grasp, reach, OPEN),  # down around it
        Waypoint(160, grasp, reach, CLOSED),  # grasp
        Waypoint(175, grasp, reach, CLOSED),  # let the grip settle before lifting
        Waypoint(230, handover + [0.05, 0, 0], pick, CLOSED),  # lift and carry
        Waypoint(250, handover, pick, CLOSED),
        Waypoint(315, handover, pick, CLOSED),  # hold still while the left jaws close
        Waypoint(340, handover, pick, OPEN),  # release
        Waypoint(370, handover + [0.1, 0, 0], pick, OPEN),  # back away to the right
        Waypoint(400, handover + [0.1, 0, 0], pick, OPEN),
    ]
    left = [
        Waypoint(0, left_start[:3], left_start[3:], CLOSED),
        Waypoint(120, left_aside, receive, OPEN),  # wait beside the hand-over point
        Waypoint(270, receive_at, receive, OPEN),  # jaws around the cube
        Waypoint(305, receive_at, receive, CLOSED),  # grasp
        Waypoint(345, receive_at, receive, CLOSED),  # hold while the right jaws open
        Waypoint(380, left_aside, receive, CLOSED),  # take it away to the left
        Waypoint(400, left_aside, receive, CLOSED),
    ]
    return left, right


def insertion_waypoints(
    left_start: np.ndarray, right_start: np.ndarray, object_poses: np.ndarray
) -> tuple[list[Waypoint], list[Waypoint]]:
    """The left arm picks the socket and the right arm the peg (both lie along x); both lift
    them to the table's centre, facing each other, and push the peg into the socket until
    it touches the pin inside.

    Args:
      left_start, right_start: the grippers' start mocap poses [7] (xyz, quat).
      object_poses: [14], the peg's pose [7] then the socket's [7], at reset.
    """
    peg = np.asarray(object_poses[:3], np.float64)
    socket = np.asarray(object_poses[7:10], np.float64)
    pick_left, pick_right = pick_quaternion("left", 60), pick_quaternion("right", 60)
    meet = np.array([0.0, 0.5, 0.15])
    # Grasped the same way, the peg's centre ends up ~11 mm lower in its jaws than the
    # socket's (measured in the joint replay, std 1.5 mm over 50 layouts): raising the peg's
    # tool point by that much lines its axis up with the hole (8 mm clearance either side).
    peg_raise = np.array([0.0, 0.0, 0.011])
    socket_grasp = np.array([socket[0], socket[1], 0.02])
    peg_grasp = np.array([peg[0], peg[1], 0.02])

    def arm(start, grasp, reach, quat, side_sign, raise_by):
        return [
            Waypoint(0, start[:3], start[3:], CLOSED),
            Waypoint(110, grasp + [0, 0, 0.1], reach, OPEN),  # above the object, jaws open
            Waypoint(160, grasp, reach, OPEN),  # down around it
            Waypoint(200, grasp, reach, CLOSED),  # grasp
            Waypoint(215, grasp, reach, CLOSED),  # let the grip settle before lifting
            Waypoint(280, meet + [side_sign * 0.1, 0, 0] + raise_by, quat, CLOSED),  # face
            Waypoint(340, meet + [side_sign * 0.04, 0, 0] + raise_by, quat, CLOSED),  # insert
            Waypoint(400, meet + [side_sign * 0.04, 0, 0] + raise_by, quat, CLOSED),
        ]

    # Reach and grasp with the fingers turned towards the object from the arm's base (as in
    # transfer_cube_waypoints: the roll joints stay near zero, max 0.5 rad instead of 0.9);
    # the lift turns the grippers back along x. The objects still end up aligned: 50 / 50
    # replays insert (the turn is < 25 degrees).
    reach_left = pick_quaternion("left", 60, toward=socket)
    reach_right = pick_quaternion("right", 60, toward=peg)
    left = arm(left_start, socket_grasp, reach_left, pick_left, -1.0, np.zeros(3))
    right = arm(right_start, peg_grasp, reach_right, pick_right, 1.0, peg_raise)
    return left, right


PLANNERS = {"transfer_cube": transfer_cube_waypoints, "insertion": insertion_waypoints}


def plan_end_effector_actions(
    task: str,
    left_start: np.ndarray,
    right_start: np.ndarray,
    object_poses: np.ndarray,
    num_steps: int,
) -> np.ndarray:
    """The scripted end-effector actions [num_steps, 16] of one episode (module docstring).

    Args:
      task: "transfer_cube" or "insertion".
      left_start, right_start: the grippers' mocap poses [7] at reset.
      object_poses: the objects' poses at reset ([7] cube; [14] peg then socket).
      num_steps: episode length in control steps.
    """
    if task not in PLANNERS:
        raise ValueError(f"no scripted plan for ALOHA task {task!r}; known: {sorted(PLANNERS)}")
    left_start = np.asarray(left_start, np.float64)
    right_start = np.asarray(right_start, np.float64)
    left, right = PLANNERS[task](left_start, right_start, np.asarray(object_poses, np.float64))
    return np.concatenate(
        [interpolate_waypoints(left, num_steps), interpolate_waypoints(right, num_steps)], axis=1
    )
