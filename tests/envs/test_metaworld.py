"""Meta-World adapter: seeded env, expert demos -> RLDS -> training step -> evaluation."""

import json
import os

import numpy as np
import pytest

from action_gen import envs
from action_gen.data import rlds, validate
from action_gen.envs import collect
from action_gen.envs import metaworld as mw
from action_gen.eval import rollout


def test_names_and_specs():
    assert mw.env_name("push") == "push-v3"
    assert mw.env_name("Meta-World/MT1 drawer-close-v3") == "drawer-close-v3"
    assert mw.task_description("button-press-topdown") == "press the button from the top"
    assert mw.task_description("shelf-place") == "shelf place"  # any other task: from its name
    assert mw.parse_spec("metaworld:reach@corner2:64") == {
        "task": "reach-v3",
        "camera": "corner2",
        "image_size": 64,
    }
    assert mw.make_spec("reach-v3", "corner2", 64) == "metaworld:reach@corner2:64"
    with pytest.raises(ValueError, match="CAMERA:SIZE"):
        mw.parse_image_flag("corner2")
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        mw.MetaWorldEnv("no-such-task")


def test_every_metaworld_task_builds_and_its_expert_acts():
    """All 50 v3 task names work with no per-task code: env, 39-d state, expert action."""
    import metaworld  # noqa: PLC0415 - the optional [sim] extra

    names = sorted(name.removesuffix("-v3") for name in metaworld.ALL_V3_ENVIRONMENTS)
    assert len(names) == 50
    for name in names:
        env = mw.MetaWorldEnv(name)
        try:
            state = env.reset(seed=7)["state"]
            assert state.shape == (39,) and np.isfinite(state).all(), name
            action = env.expert_action()
            assert action.shape == (4,) and np.abs(action).max() <= 1.0, name
            observation, reward, success, truncated = env.step(action)
            assert observation["state"].shape == (39,) and np.isfinite(reward), name
            assert mw.task_description(name), name
        finally:
            env.close()


def test_vector_env_contract_and_seeding():
    env = envs.make_vector_env("metaworld:reach", num_envs=2)
    obs, info = env.reset(seed=[3, 4])
    assert obs["state"].shape == (2, 39) and obs["state"].dtype == np.float32
    assert list(info["instruction"]) == ["reach the red goal position"] * 2
    again, _ = env.reset(seed=[3, 5])
    np.testing.assert_array_equal(again["state"][0], obs["state"][0])  # same seed, same layout
    assert not np.allclose(again["state"][1], obs["state"][1])
    # A frozen env ignores its actions once done.
    env.max_episode_steps = 3
    for _ in range(3):
        obs, _, terminated, truncated, info = env.step(np.zeros((2, 4)))
    assert truncated.all() and not terminated.any() and not info["success"].any()
    frozen, *_ = env.step(np.ones((2, 4)))
    np.testing.assert_array_equal(frozen["state"], obs["state"])


def test_expert_demos_to_rlds_to_training_step(tmp_path):
    """The issue's end-to-end test: 2 expert episodes -> RLDS -> validator -> one step."""
    path = collect.collect_to_rlds("metaworld:reach", str(tmp_path), num_episodes=2, seed=0)
    assert path.endswith(os.path.join("metaworld_reach", "1.0.0"))
    with open(os.path.join(path, mw.EXPERT_STATS_FILE)) as f:
        stats = json.load(f)
    assert stats["successes"] == 2 and stats["attempts"] >= 2 and len(stats["seeds"]) == 2
    episodes = list(rlds.load_rlds_episodes(path).as_numpy_iterator())
    assert len(episodes) == 2
    for episode in episodes:
        assert episode["observation"]["state"].shape[1] == 39
        assert episode["action"].shape[1] == 4 and np.abs(episode["action"]).max() <= 1.0
        assert episode["language_instruction"][0] == b"reach the red goal position"
    report = validate.validate_dataset(path)
    assert not report.errors, report.format()

    from action_gen.train import loop
    from configs import diffusion_unet_metaworld

    config = diffusion_unet_metaworld.get_config("task=reach,runlocal,steps=1")
    config.data.dataset_dir = path
    config.train.checkpoint_every = 1
    state = loop.train(config, str(tmp_path / "run"))
    assert int(state.step) == 1


def test_demos_continue_past_success_and_reuse_is_checked(tmp_path):
    """post_success_steps keeps that many expert steps after the first success (same seed,
    same start); reusing demos under another setting is refused, naming the file."""
    cut = next(mw.expert_episodes("reach", 1, seed=0))
    longer = next(mw.expert_episodes("reach", 1, seed=0, post_success_steps=6))
    assert len(longer["action"]) == len(cut["action"]) + 6
    np.testing.assert_array_equal(longer["action"][: len(cut["action"])], cut["action"])

    spec = "metaworld:reach"
    path = collect.ensure_builtin_dataset(
        spec, str(tmp_path), num_episodes=1, seed=0, post_success_steps=6
    )
    with open(os.path.join(path, mw.EXPERT_STATS_FILE)) as f:
        assert json.load(f)["post_success_steps"] == 6
    (episode,) = rlds.load_rlds_episodes(path).as_numpy_iterator()
    assert len(episode["action"]) == len(longer["action"])
    again = collect.ensure_builtin_dataset(
        spec, str(tmp_path), num_episodes=1, seed=0, post_success_steps=6
    )
    assert again == path
    with pytest.raises(ValueError, match=r"expert_stats.json.*post_success_steps=6"):
        collect.ensure_builtin_dataset(spec, str(tmp_path), num_episodes=1, seed=0)
    with pytest.raises(ValueError, match="only Meta-World"):
        collect.collect_to_rlds(
            "obstacle", str(tmp_path), num_episodes=1, seed=0, post_success_steps=3
        )

    from configs import diffusion_unet_metaworld  # noqa: PLC0415

    config = diffusion_unet_metaworld.get_config("task=reach,cpu,post_success=6")
    assert config.data.demo_post_success_steps == 6
    assert diffusion_unet_metaworld.get_config("task=reach").data.demo_post_success_steps == 0


def test_image_demos_and_rollout_with_images(tmp_path):
    """Camera frames (upright, uint8) reach the RLDS dataset and the rollout's policy_fn."""
    path = collect.collect_to_rlds(
        "metaworld:reach@corner2:32", str(tmp_path), num_episodes=1, seed=0
    )
    (episode,) = rlds.load_rlds_episodes(path).as_numpy_iterator()
    frames = episode["observation"]["image/corner2"]
    assert frames.shape[1:] == (32, 32, 3) and frames.dtype == np.uint8
    assert episode["observation"]["state"].shape[1] == 4  # proprio only with a camera
    # MuJoCo renders the corner cameras upside down; the env flips them upright.
    env = mw.make_env("reach", camera="corner2", image_size=32)
    assert isinstance(env, mw.RemoteMetaWorldEnv)  # TensorFlow is loaded in this process
    obs = env.reset(seed=int(episode["episode_metadata"]["seed"]))
    np.testing.assert_array_equal(obs["image/corner2"], frames[0])  # same seed, same frame
    env.close()

    vec = envs.make_vector_env("metaworld:reach@corner2:32", num_envs=2)
    seen = []

    def policy_fn(history, pad_mask, rng_step, prompt=None, images=None):
        seen.append((history.shape, images["corner2"].shape, list(prompt)))
        return np.zeros((history.shape[0], 8, 4), np.float32)

    result = rollout.run_rollouts(
        vec, policy_fn, num_episodes=3, seed=1, obs_horizon=2, action_exec_horizon=4, max_steps=6
    )
    assert seen[0] == ((2, 2, 4), (2, 2, 32, 32, 3), ["reach the red goal position"] * 2)
    assert result["success"].shape == (3,) and result["timeout"].all()
    assert [len(a) for a in result["actions"]] == [6, 6, 6]


def test_wilson_interval():
    from action_gen.eval.evaluate import wilson_interval

    low, high = wilson_interval(45, 50)  # 90% of 50 episodes
    assert abs(low - 0.7864) < 1e-3 and abs(high - 0.9565) < 1e-3
    assert wilson_interval(50, 50)[1] == 1.0 and wilson_interval(50, 50)[0] < 1.0
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(0, 50)[1] > 0.0


@pytest.mark.slow
def test_image_policy_train_and_eval(tmp_path):
    """Image pipeline end to end: camera demos -> RLDS -> ResNet-GN U-Net training steps ->
    checkpoint -> Policy -> rollouts in camera envs -> results.json with a 95% interval."""
    from action_gen import main
    from configs import flow_unet_metaworld

    config = flow_unet_metaworld.get_config("task=reach,image=corner2:32,runlocal,steps=2")
    assert config.data.cameras.to_dict() == {"corner2": [32, 32]}
    config.eval.max_steps = 8
    summary = main.run(config, str(tmp_path / "run"), "train_and_eval")
    assert summary["episodes"] == 2 and summary["env"] == "metaworld:reach@corner2:32"
    assert 0.0 <= summary["success_ci95_low"] <= summary["success_rate"]
    assert summary["success_rate"] <= summary["success_ci95_high"] <= 1.0
    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["episodes"] == 2


def test_multi_task_policy_train_and_eval_with_video(tmp_path):
    """task=A+B: one demo dataset per task, mixed and normalized jointly, a U-Net that reads
    the instruction, evaluation on every task (mean on top), and filmed episodes."""
    from action_gen import main
    from configs import diffusion_unet_metaworld

    config = diffusion_unet_metaworld.get_config("task=reach+drawer-close,runlocal,steps=2")
    assert config.data.builtin_task == ["metaworld:reach", "metaworld:drawer-close"]
    assert config.data.prompt_max_len > 0
    config.eval.max_steps = 8
    config.eval.record = "corner2:32"
    config.eval.record_episodes = 1
    workdir = tmp_path / "run"
    summary = main.run(config, str(workdir), "train_and_eval")
    assert sorted(os.listdir(workdir / "dataset")) == ["drawer-close", "reach"]
    assert summary["num_tasks"] == 2 and summary["episodes"] == 4
    tasks = summary["tasks"]
    assert set(tasks) == {"metaworld:reach", "metaworld:drawer-close"}
    rates = [t["success_rate"] for t in tasks.values()]
    assert summary["success_rate"] == pytest.approx(np.mean(rates))
    for name in ("reach", "drawer-close"):
        assert (workdir / f"rollouts_{name}.npz").exists()
        assert (workdir / f"rollouts_{name}.gif").exists()
        assert (workdir / f"frames_{name}.png").exists()
    from action_gen.sample.policy import Policy

    params = Policy.from_checkpoint(str(workdir)).params
    assert "instruction_encoder" in params


def test_metaworld_policies_sample_unclipped():
    """Diffusion and flow sample unclipped (the env clips to its action space), in training
    configs and at --mode=eval alike; regression has no sampler clip to set."""
    from configs import (  # noqa: PLC0415
        diffusion_unet_metaworld,
        flow_unet_metaworld,
        regression_unet_metaworld,
    )

    for module in (diffusion_unet_metaworld, flow_unet_metaworld):
        config = module.get_config("task=reach,cpu")
        assert config.objective.clip_sample is False and config.eval.clip_sample is False
    config = regression_unet_metaworld.get_config("task=reach,cpu")
    # eval.clip_sample None: "the checkpoint's", and a regression checkpoint has none.
    assert "clip_sample" not in config.objective and config.eval.clip_sample is None
