"""ALOHA sim adapter: specs, scripted demos (end-effector rollout + joint replay), the vector
env contract with stages, the rollout's per-episode stage, and collection to LeRobot.

Every simulator runs in a spawned worker (envs/aloha.py: dm-control's EGL backend and
TensorFlow cannot share a process, and other test files in this worker load TensorFlow).
"""

import json
import types

import numpy as np
import pytest

from action_gen import cli, envs
from action_gen.data import lerobot
from action_gen.envs import aloha, aloha_scripted, collect, obstacle
from action_gen.eval import metrics, rollout

# The first two episode seeds of a rollout with base seed 0 (rollout.run_rollouts).
SEED, OTHER_SEED = (int(s) for s in obstacle.episode_seeds(0, 2))


def test_specs_names_and_errors():
    assert aloha.parse_spec("aloha_insertion+env_state@top:240x320") == {
        "task": "insertion",
        "camera": "top",
        "image_size": (240, 320),
        "environment_state": True,
    }
    assert aloha.parse_spec("aloha_transfer_cube")["camera"] is None
    for spec in ("aloha_transfer_cube@top:480x640", "aloha_insertion+env_state"):
        parsed = aloha.parse_spec(spec)
        assert aloha.make_spec(**parsed) == spec
    assert aloha.parse_image_flag("top:96") == ("top", (96, 96))
    assert aloha.dataset_name("aloha_transfer_cube@top:480x640") == (
        "aloha_sim_transfer_cube_scripted"
    )
    assert (
        aloha.dataset_name("aloha_insertion@top:48x64") == "aloha_sim_insertion_scripted_top48x64"
    )
    assert aloha.dataset_name("aloha_insertion") == "aloha_sim_insertion_scripted_state_only"
    with pytest.raises(ValueError, match=r"unknown ALOHA task 'pick'.*aloha_insertion"):
        aloha.parse_spec("aloha_pick")
    with pytest.raises(ValueError, match="CAMERA:HEIGHTxWIDTH"):
        aloha.parse_image_flag("top:480x")
    with pytest.raises(ValueError, match=r"unknown env 'nope'.*aloha_transfer_cube"):
        envs.make_vector_env("nope", num_envs=1)
    with pytest.raises(ValueError, match="LeRobot dataset"):
        collect.collect_to_rlds("aloha_insertion", "/unused", num_episodes=1, seed=0)


def test_object_poses_are_gym_alohas_seeded_draws():
    cube = aloha.object_poses("transfer_cube", SEED)
    np.testing.assert_array_equal(cube, aloha.object_poses("transfer_cube", SEED))
    assert not np.allclose(cube, aloha.object_poses("transfer_cube", SEED + 1))
    assert 0.0 <= cube[0] <= 0.2 and 0.4 <= cube[1] <= 0.6 and cube[2] == 0.05
    peg_socket = aloha.object_poses("insertion", SEED)
    assert peg_socket.shape == (14,) and peg_socket[0] > 0.0 > peg_socket[7]  # peg right


def test_plan_interpolates_waypoints():
    w = aloha_scripted.Waypoint
    quat = np.array([1.0, 0, 0, 0])
    plan = aloha_scripted.interpolate_waypoints(
        [w(0, np.zeros(3), quat, 0.0), w(10, np.array([1.0, 0, 0]), quat, 1.0)], 12
    )
    assert plan.shape == (12, 8)
    np.testing.assert_allclose(plan[5], [0.5, 0, 0, 1, 0, 0, 0, 0.5])
    np.testing.assert_allclose(plan[11], plan[10])  # held after the last waypoint
    with pytest.raises(ValueError, match="start at 0"):
        aloha_scripted.interpolate_waypoints([w(3, np.zeros(3), quat, 0.0)], 5)
    # Pitching the right gripper 90 degrees down turns its fingers (-x) to point down.
    down = aloha_scripted.pick_quaternion("right", 90)
    rotated = aloha_scripted.quaternion_multiply(
        aloha_scripted.quaternion_multiply(down, [0, -1, 0, 0]), down * [1, -1, -1, -1]
    )
    np.testing.assert_allclose(rotated[1:], [0, 0, -1], atol=1e-12)


@pytest.fixture(scope="module")
def demos():
    """One scripted demo per task (with object poses in the state), in a worker."""
    out = {}
    for task in ("transfer_cube", "insertion"):
        env = aloha.make_env(task, environment_state=True)
        try:
            out[task] = env.scripted_demo(SEED)
        finally:
            env.close()
    return out


def test_transfer_cube_demos_stay_on_one_wrist_branch():
    """Cube layouts near the table's centre used to send the right wrist through its pitch
    singularity onto the (roll + pi, -pitch, rotate + pi) branch (seed 574372308: forearm
    roll 3.14 at the hand-over, where other layouts have 0): the same gripper pose, joint
    targets pi apart. The turned approach keeps both roll joints near zero
    (aloha_scripted.pick_quaternion)."""
    flipping_seed = 574372308  # cube at x = 0.048, y = 0.409
    env = aloha.make_env("transfer_cube")
    try:
        demo = env.scripted_demo(flipping_seed)
    finally:
        env.close()
    assert demo["replay_success"], demo
    action = demo["episode"]["action"]
    forearm_roll, wrist_angle, wrist_rotate = action[:, 10], action[:, 11], action[:, 12]
    assert np.abs(forearm_roll).max() < 0.6 and np.abs(wrist_rotate).max() < 0.6
    assert wrist_angle[250] > 0.5  # the branch every layout ends on (0.89 rad)


def test_pick_quaternion_turns_the_fingers_towards_the_target():
    for side, target in (("right", [0.05, 0.6]), ("left", [-0.1, 0.42])):
        quat = aloha_scripted.pick_quaternion(side, 0, toward=target)
        finger = 1.0 if side == "left" else -1.0
        pointing = aloha_scripted.quaternion_multiply(
            aloha_scripted.quaternion_multiply(quat, [0, finger, 0, 0]), quat * [1, -1, -1, -1]
        )[1:]
        direction = np.asarray(target) - aloha_scripted.ARM_BASE_XY[side]
        np.testing.assert_allclose(pointing[:2], direction / np.linalg.norm(direction), atol=1e-12)
        assert abs(pointing[2]) < 1e-12
    # Pitch and turn compose: 90 degrees down points the fingers straight down either way.
    down = aloha_scripted.pick_quaternion("right", 90, toward=[0.05, 0.6])
    pointing = aloha_scripted.quaternion_multiply(
        aloha_scripted.quaternion_multiply(down, [0, -1, 0, 0]), down * [1, -1, -1, -1]
    )[1:]
    np.testing.assert_allclose(pointing, [0, 0, -1], atol=1e-12)


@pytest.mark.parametrize("task, state_dim", [("transfer_cube", 21), ("insertion", 28)])
def test_scripted_demo_succeeds_in_ee_and_in_joint_replay(demos, task, state_dim):
    demo = demos[task]
    assert demo["ee_success"] and demo["replay_success"], demo
    assert demo["ee_stage"] == demo["replay_stage"] == aloha.MAX_REWARD
    episode = demo["episode"]
    state, action = episode["observation"]["state"], episode["action"]
    assert state.shape == (aloha.EPISODE_STEPS, state_dim) and state.dtype == np.float32
    assert action.shape == (aloha.EPISODE_STEPS, aloha.ACTION_DIM)
    # The replay starts from the seed's layout, as gym-aloha draws it.
    np.testing.assert_allclose(state[0, 14:], aloha.object_poses(task, SEED), atol=1e-6)
    # Gripper commands are normalized openings; both grippers open and close.
    grippers = action[:, [6, 13]]
    assert grippers.min() >= 0.0 and grippers.max() <= 1.0
    assert (grippers.max(0) > 0.9).all() and (grippers.min(0) < 0.1).all()
    # Both forearm-roll joints stay near zero: one joint-space branch for every layout
    # (aloha_scripted.pick_quaternion; the other branch has them at +-pi).
    assert np.abs(action[:, [3, 10]]).max() < 0.6
    # Success: the reward reaches 4 and, for a real hand-over / insertion, stays there.
    assert episode["reward"].max() == aloha.MAX_REWARD == episode["reward"][-1]
    assert episode["language_instruction"] == aloha.TASKS[task].instruction


def test_vector_env_contract_seeding_stage_and_rollout(demos):
    """Seeded reset, freezing, sticky success/stage; run_rollouts reports each episode's
    furthest stage (a replayed demo reaches 4, a policy that holds still stays at 0)."""
    env = envs.make_vector_env("aloha_transfer_cube+env_state", num_envs=2)
    try:
        obs, info = env.reset(seed=[SEED, OTHER_SEED])
        assert obs["state"].shape == (2, 21) and obs["state"].dtype == np.float32
        assert list(info["instruction"]) == [aloha.TASKS["transfer_cube"].instruction] * 2
        assert info["stage"].tolist() == [0, 0] and not info["success"].any()
        again, _ = env.reset(seed=[SEED, SEED + 2])
        np.testing.assert_array_equal(again["state"][0], obs["state"][0])  # same seed
        assert not np.allclose(again["state"][1, 14:], obs["state"][1, 14:])
        with pytest.raises(ValueError, match=r"\[2, 14\] actions"):
            env.step(np.zeros((2, 7)))

        commands = demos["transfer_cube"]["episode"]["action"]  # recorded on SEED's layout

        def policy_fn(obs_history, obs_pad_mask, rng_step, prompt=None):
            """Env 0 replays the demo, env 1 holds its current joint positions."""
            t = rng_step * 8  # one call per 8 executed steps
            chunk = commands[t : t + 8]
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], 8 - len(chunk), 0)])
            hold = np.repeat(obs_history[1, -1, None, :14], 8, 0)
            return np.stack([chunk, hold])

        result = rollout.run_rollouts(
            env, policy_fn, num_episodes=2, seed=0, obs_horizon=1, action_exec_horizon=8
        )
        assert result["success"].tolist() == [True, False]
        assert result["max_stage"].tolist() == [4, 0] and result["num_stages"] == 4
        assert result["length"][0] < aloha.EPISODE_STEPS == result["length"][1]
        summary = metrics.summarize(result)
        assert summary["stage_1_rate"] == summary["stage_4_rate"] == 0.5
        # Both finished: frozen, actions ignored.
        frozen, _, terminated, truncated, info = env.step(np.ones((2, 14)))
        assert terminated.tolist() == [True, False] and truncated.tolist() == [False, True]
        assert info["stage"].tolist() == [4, 0]
        final = result["states"][0][-1]
        np.testing.assert_array_equal(frozen["state"][0], final)
    finally:
        env.close()


def test_unstable_physics_ends_that_episode_only():
    """A step that leaves MuJoCo's state invalid (here a NaN joint target: mjWARN_BADCTRL)
    ends that env's episode as a failure; the other env runs on, and a reset recovers."""
    env = envs.make_vector_env("aloha_transfer_cube", num_envs=2)
    try:
        obs, _ = env.reset(seed=[SEED, OTHER_SEED])
        hold = obs["state"].copy()
        bad = hold.copy()
        bad[0, 3] = np.nan
        after, _, terminated, truncated, info = env.step(bad)
        assert info["physics_unstable"].tolist() == [True, False]
        assert truncated.tolist() == [True, False] and not terminated.any()
        np.testing.assert_array_equal(after["state"][0], obs["state"][0])  # last valid one
        assert np.isfinite(after["state"]).all()
        _, _, _, truncated, info = env.step(hold)
        assert truncated.tolist() == [True, False]
        obs, info = env.reset(seed=[SEED, OTHER_SEED])
        assert not info["physics_unstable"].any()
        after, _, _, truncated, info = env.step(hold)
        assert not truncated.any() and not info["physics_unstable"].any()
        assert np.isfinite(after["state"]).all()
    finally:
        env.close()


def test_camera_env_and_filming():
    env = envs.make_vector_env("aloha_insertion@top:48x64", num_envs=1)
    try:
        obs, _ = env.reset(seed=[SEED])
        frame = obs["image/top"]
        assert frame.shape == (1, 48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 10
        assert obs["state"].shape == (1, 14)
    finally:
        env.close()
    filmed = envs.make_vector_env("aloha_transfer_cube", num_envs=1, record="top:24x32")
    try:
        obs, _ = filmed.reset(seed=[SEED])
        assert obs["record/top"].shape == (1, 24, 32, 3) and "image/top" not in obs
    finally:
        filmed.close()
    with pytest.raises(ValueError, match="unknown ALOHA camera 'wrist'"):
        envs.make_vector_env("aloha_insertion@wrist:48x64", num_envs=1)


def test_collect_writes_a_lerobot_dataset_the_reader_reads(tmp_path):
    """The collect command's ALOHA branch: 1 demo at 48x64 -> LeRobot v3.0 -> our reader."""
    flags = types.SimpleNamespace(
        env="aloha_transfer_cube", episodes=1, seed=0, out=str(tmp_path), image="top:48x64",
        environment_state=False, workers=1, post_success_steps=0,
    )  # fmt: skip
    path = collect._collect_aloha(flags)
    assert path == str(tmp_path / "aloha_sim_transfer_cube_scripted_top48x64")
    info = lerobot.read_lerobot_info(path)
    assert info.version == "v3.0" and info.fps == aloha.FPS and info.robot_type == "aloha"
    assert info.cameras == {"top": "observation.images.top"} and info.is_video("top")
    assert info.features["observation.state"]["shape"] == [14]
    assert info.features["action"]["shape"] == [14]
    (episode,) = list(lerobot.iterate_lerobot_episodes(path))
    observation = episode["observation"]
    assert observation["state"].shape == (aloha.EPISODE_STEPS, 14)
    assert observation["image/top"].shape == (aloha.EPISODE_STEPS, 48, 64, 3)
    assert episode["action"].shape == (aloha.EPISODE_STEPS, 14)
    assert set(episode["language_instruction"]) == {aloha.TASKS["transfer_cube"].instruction}
    # The recorded state is the joint replay's, which follows its commands (grippers
    # aside, which lag): the first step starts at the arms' rest pose.
    np.testing.assert_allclose(observation["state"][0, :6], [0, -0.96, 1.16, 0, -0.3, 0], atol=1e-6)
    stats = json.loads((tmp_path / aloha.dataset_name("aloha_transfer_cube@top:48x64")
                        / aloha.SCRIPTED_STATS_FILE).read_text())  # fmt: skip
    assert stats["replay_successes"] == 1 and stats["kept_seeds"] and stats["attempts"] >= 1
    with pytest.raises(cli.UserError, match="exists; remove it"):
        collect._collect_aloha(flags)


def test_the_top_frame_and_state_are_gym_alohas_own(tmp_path):
    """What eval/served.py hands openpi's ALOHA-sim client (our env's top camera at 480x640
    and its 14 joints) is what gym-aloha's own env gives that client (`pixels/top`,
    `agent_pos`), pixel for pixel, at reset and after steps. In a subprocess: dm-control
    and TensorFlow cannot share this worker."""
    import subprocess
    import sys

    code = f"""
import gymnasium, gym_aloha, numpy as np
from action_gen.envs import aloha
ours = aloha.AlohaEnv("transfer_cube", camera="top", image_size=(480, 640))
theirs = gymnasium.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")
a = ours.reset({SEED})
b, _ = theirs.reset(seed={SEED})
action = np.asarray(a["state"], np.float32) + 0.05
for step in range(3):
    np.testing.assert_array_equal(a["image/top"], b["pixels"]["top"])
    np.testing.assert_allclose(a["state"], b["agent_pos"], atol=1e-6)
    a, reward, _, _ = ours.step(action)
    b, their_reward, *_ = theirs.step(action)
    assert reward == their_reward
print("same", a["image/top"].shape)
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "same (480, 640, 3)" in run.stdout
