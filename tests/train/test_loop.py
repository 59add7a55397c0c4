"""Smoke test of the real `runlocal` config: train → checkpoint → resume, bit for bit."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from action_gen import compat, config_schema
from action_gen.data import pipeline, sources
from action_gen.envs import collect
from action_gen.train import loop
from configs import diffusion_unet_obstacle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(dataset_dir):
    config = diffusion_unet_obstacle.get_config("runlocal")
    config.data.dataset_dir = str(dataset_dir)
    config.train.num_steps = 4
    config.train.checkpoint_every = 2
    return config


def _assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    config = _config(root / "dataset")
    collect.collect_builtin_datasets(config.data, str(root / "full"))  # the data step
    state = loop.train(config, str(root / "full"))
    return root, config, state


def test_resume_equals_uninterrupted_run(trained):
    root, config, full_state = trained
    workdir = str(root / "resumed")
    interrupted = loop.train(config, workdir, stop_at_step=2)
    assert int(interrupted.step) == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[:1] == ["2"]
    resumed = loop.train(config, workdir)
    assert int(resumed.step) == 4
    _assert_trees_equal(jax.device_get(full_state), jax.device_get(resumed))


def test_an_earlier_checkpoint_is_evaluated_on_request(trained):
    """`eval.checkpoint_step` (a learning curve) restores that step's parameters; results.json
    says which step it evaluated."""
    from action_gen.eval import evaluate, rollout

    root, config, _ = trained
    workdir = str(root / "full")
    eval_config = config.eval.copy_and_resolve_references()
    eval_config.num_episodes, eval_config.num_envs, eval_config.max_steps = 2, 2, 5
    eval_config.plot, eval_config.record = False, ""
    rollouts = os.path.join(workdir, evaluate.ROLLOUTS_FILE)
    latest = evaluate.evaluate_checkpoint(workdir, eval_config)
    assert latest["checkpoint_step"] == config.train.num_steps
    latest_actions = rollout.load_rollouts(rollouts)["actions"]
    eval_config.checkpoint_step = 2
    earlier = evaluate.evaluate_checkpoint(workdir, eval_config)
    assert earlier["checkpoint_step"] == 2
    with open(os.path.join(workdir, evaluate.RESULTS_FILE)) as f:
        assert json.load(f)["checkpoint_step"] == 2
    # Other parameters: other actions from the same seeds and sampling noise.
    earlier_actions = rollout.load_rollouts(rollouts)["actions"]
    assert not np.allclose(earlier_actions[0], latest_actions[0])
    eval_config.checkpoint_step = 3  # never saved
    with pytest.raises(ValueError, match=r"checkpoint_step=3: .* at steps \[2, 4\]"):
        evaluate.evaluate_checkpoint(workdir, eval_config)


def test_checkpoint_is_self_describing(trained):
    root, config, _ = trained
    from action_gen.sample.policy import Policy

    policy = Policy.from_checkpoint(str(root / "full"))
    assert policy.config.model.down_dims == tuple(config.model.down_dims) or list(
        policy.config.model.down_dims
    ) == list(config.model.down_dims)
    obs = {"observation/state": np.zeros((3, 2, policy.state_dim), np.float32)}
    actions = policy.sample_actions(obs, rng=0)
    assert actions.shape == (3, config.data.action_horizon, policy.action_dim)
    assert np.isfinite(actions).all()
    np.testing.assert_array_equal(actions, policy.sample_actions(obs, rng=0))


def test_sampler_settings_are_overridable_on_a_checkpoint(trained):
    """clip_sample (a sampling-only setting) can be changed at restore and on resume; the
    clipped chunk stays inside the demos' action range, the unclipped one need not."""
    root, config, _ = trained
    from action_gen.data import normalize
    from action_gen.sample.policy import Policy

    clipped = Policy.from_checkpoint(str(root / "full"))
    unclipped = Policy.from_checkpoint(str(root / "full"), clip_sample=False)
    assert clipped.config.objective.clip_sample and not unclipped.config.objective.clip_sample
    obs = {"observation/state": np.zeros((8, 2, clipped.state_dim), np.float32)}
    low = np.asarray(clipped.norm_stats[normalize.ACTIONS]["min"])
    high = np.asarray(clipped.norm_stats[normalize.ACTIONS]["max"])
    inside = clipped.sample_actions(obs, rng=0)
    assert ((inside >= low - 1e-5) & (inside <= high + 1e-5)).all()
    outside = unclipped.sample_actions(obs, rng=0)
    assert ((outside < low - 1e-3) | (outside > high + 1e-3)).any()
    # Resuming under another sampling setting is allowed; another model is not (above).
    stored = compat.config_to_json_dict(config)
    changed = _config(root / "dataset")
    changed.objective.clip_sample = False
    assert changed.eval.clip_sample is False  # linked: --mode=eval samples the same way
    changed.objective.num_sample_steps = 3
    compat.check_resume(stored, compat.config_to_json_dict(changed), root, "")
    changed.objective.schedule = "linear"
    with pytest.raises(ValueError, match="objective.schedule"):
        compat.check_resume(stored, compat.config_to_json_dict(changed), root, "")


def test_cli_eval_writes_results(trained):
    root, _, _ = trained
    workdir = str(root / "full")
    command = [
        sys.executable,
        "-m",
        "action_gen.main",
        f"--config={REPO}/configs/diffusion_unet_obstacle.py:runlocal",
        f"--workdir={workdir}",
        "--mode=eval",
        "--config.eval.num_episodes=3",
        "--config.eval.seed=200000",  # the test split (eval/seed_splits.py)
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(command, check=True, cwd=REPO, env=env, capture_output=True, timeout=300)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for key in ("success_rate", "collision_rate", "mode_left_fraction", "episodes"):
        assert key in results
    assert results["episodes"] == 3
    assert (results["eval_seed"], results["eval_seed_split"]) == (200_000, "test")
    assert os.path.exists(os.path.join(workdir, "rollouts.png"))


def test_missing_dataset_is_a_clear_error(tmp_path):
    config = _config(tmp_path / "nowhere")
    config.data.builtin_task = ""
    with pytest.raises(FileNotFoundError, match="nowhere"):
        loop.train(config, str(tmp_path / "run"))


def test_resume_with_a_different_model_is_refused(trained):
    root, config, _ = trained
    changed = _config(root / "dataset")
    changed.model.down_dims = (16, 32, 64)
    with pytest.raises(ValueError, match="model.down_dims"):
        loop.train(changed, str(root / "full"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(trained):
    root, _, _ = trained
    config = _config(root / "dataset")
    config.train.checkpoint_every = 1
    config.train.log_every = 1
    config.optimizer.lr = float("nan")  # the first update poisons the parameters
    workdir = root / "nan"
    with pytest.raises(FloatingPointError, match="step 2"):
        loop.train(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]


def test_dataset_dirs_of_one_or_several_tasks(tmp_path):

    data = config_schema.section(
        "data", dataset_dir="", builtin_task="", num_demo_episodes=2, demo_seed=0
    )
    assert sources.dataset_dirs(data, str(tmp_path)) == [str(tmp_path / "dataset")]
    data.dataset_dir = "/data/a"
    assert sources.dataset_dirs(data, str(tmp_path)) == ["/data/a"]
    several = config_schema.section(
        "data",
        dataset_dir=["/data/a"],
        builtin_task=["obstacle", "obstacle_language"],
        num_demo_episodes=2,
        demo_seed=0,
    )
    with pytest.raises(ValueError, match="data.dataset_dir lists 1 directories"):
        sources.dataset_dirs(several, str(tmp_path))
    several.dataset_dir = []
    # Path resolution writes nothing; the data step generates both (2 demos each).
    assert not os.path.exists(tmp_path / "dataset")
    dirs = collect.collect_builtin_datasets(several, str(tmp_path))
    assert [os.path.relpath(d, tmp_path / "dataset").split(os.sep)[0] for d in dirs] == [
        "obstacle",
        "obstacle_language",
    ]
    weights = config_schema.section("data", weights=[1.0, 2.0])
    assert sources.mixture_weights(weights, 2) == [1.0, 2.0]
    with pytest.raises(ValueError, match="data.weights has 2 entries for 3 datasets"):
        sources.mixture_weights(weights, 3)


def test_train_loop_does_not_collect_demos(tmp_path):
    """Collecting demos is the data step's job: the loop names the missing dataset and
    the command that writes it, and writes nothing itself."""
    config = _config(tmp_path / "dataset")
    with pytest.raises(FileNotFoundError, match="--mode=collect"):
        loop.train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "dataset")


def test_resume_refuses_changed_normalization(trained):
    root, config, _ = trained
    changed = _config(root / "dataset")
    changed.data.action_norm = "meanstd"
    with pytest.raises(ValueError, match="data.action_norm"):
        loop.train(changed, str(root / "full"))
    changed = _config(root / "dataset")
    changed.data.state_norm = "none"
    with pytest.raises(ValueError, match="data.state_norm"):
        loop.train(changed, str(root / "full"))


def test_resume_takes_norm_stats_from_the_checkpoint(trained, monkeypatch):
    """A resumed run normalizes with the stats its parameters were trained under: it
    never recomputes them from what is on disk now."""
    root, config, _ = trained
    workdir = str(root / "stats")
    loop.train(config, workdir, stop_at_step=2)

    def recompute(*_):
        raise AssertionError("norm stats recomputed on resume")

    monkeypatch.setattr(pipeline, "compute_dataset_norm_stats", recompute)
    monkeypatch.setattr(pipeline, "compute_mixture_norm_stats", recompute)
    assert int(loop.train(config, workdir).step) == config.train.num_steps


def test_resume_on_other_data_is_refused_unless_allowed(trained):
    root, config, _ = trained
    workdir = str(root / "other_data")
    loop.train(config, workdir, stop_at_step=2)
    other = collect.ensure_builtin_dataset(
        "obstacle", str(root / "other"), num_episodes=3, seed=123
    )
    changed = _config(other)
    with pytest.raises(ValueError, match="allow_dataset_change") as error:
        loop.train(changed, workdir)
    assert "other" in str(error.value) and str(root / "dataset") in str(error.value)
    changed.train.allow_dataset_change = True
    assert int(loop.train(changed, workdir).step) == config.train.num_steps


def test_preempted_train_and_eval_does_not_evaluate(monkeypatch, tmp_path):
    """A SIGTERM-stopped training (state.step < num_steps) must not write results.json."""
    import types

    from action_gen import main
    from action_gen.eval import evaluate

    config = diffusion_unet_obstacle.get_config("runlocal")
    monkeypatch.setattr(loop, "train", lambda c, w: types.SimpleNamespace(step=1))
    called = []
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda *a: called.append(a))
    assert main.run(config, str(tmp_path), "train_and_eval") is None
    assert not called
    monkeypatch.setattr(loop, "train", lambda c, w: types.SimpleNamespace(step=c.train.num_steps))
    main.run(config, str(tmp_path), "train_and_eval")
    assert len(called) == 1


def test_data_state_names_the_stream_position_and_datasets(trained):
    """What each checkpoint stores of the data (`run.DataState`, written by the loop from
    its `DataSetup`): the stream position, the seed, the dataset and its fingerprint."""
    from action_gen import run as run_lib

    root, config, _ = trained
    workdir = str(root / "full")
    (dataset_dir,) = loop.existing_dataset_dirs(config, workdir)
    assert run_lib.Run.open(workdir).data_state() == run_lib.DataState(
        batches_consumed=4,
        seed=config.seed,
        dataset_dir=dataset_dir,
        dataset_fingerprints=[pipeline.dataset_fingerprint(dataset_dir)],
    )
    # The keys trained runs have always stored (an import adds `imported_from`).
    keys = ["batches_consumed", "dataset_dir", "dataset_fingerprints", "seed"]
    assert sorted(run_lib.DataState(batches_consumed=2, seed=1).to_json()) == keys
