"""Consistency distillation: the grid, the skip-scaling's boundary condition, the loss's
fixed point, the EMA target, multistep sampling, and the whole chain (teacher → student
→ 1-step evaluation) through `main.run` at toy size."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import checkpoint, compat, main, models, objectives
from action_gen.data import schema
from action_gen.objectives import consistency, diffusion, flow
from action_gen.sample.policy import Policy
from configs import consistency_unet_obstacle

B, T, S, H, A = 3, 2, 5, 8, 2
UNET = {"name": "unet1d", "down_dims": (8,), "time_embed_dim": 8, "n_groups": 4}


def _obs():
    rng = np.random.default_rng(0)
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((B, T), bool),
    }


@pytest.fixture(scope="module")
def unet():
    model = models.create_model(ml_collections.ConfigDict(UNET))
    params = models.init_params(model, jax.random.key(0), _obs(), (H, A))
    return models.make_apply_fn(model), params


def _batch():
    rng = np.random.default_rng(1)
    return {**_obs(), schema.ACTIONS: jnp.asarray(rng.uniform(-1, 1, (B, H, A)), jnp.float32)}


def test_grid_is_the_teachers_sampler_chain():
    """Diffusion: the DDIM chain's steps and ᾱ, then the data end; flow: t_i = i / N, and
    in openpi's convention the model's time mirrored (1 - t_i)."""
    grid = diffusion.probability_flow(10, num_train_steps=100).grid
    ks, alpha_bar, alpha_bar_prev = diffusion.sampler_constants(100, 10)
    np.testing.assert_array_equal(grid.model_time[:-1], ks)
    np.testing.assert_allclose(grid.alpha_bar[:-1], alpha_bar)
    np.testing.assert_allclose(grid.alpha_bar[1:], alpha_bar_prev)
    assert grid.signal[-1] == 1.0 and grid.noise[-1] == 0.0
    flow_grid = flow.probability_flow(4, time_scale=100.0).grid
    np.testing.assert_allclose(flow_grid.signal, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(flow_grid.model_time, [0, 25, 50, 75, 100])
    mirrored = flow.probability_flow(4, time_scale=1.0, time_convention="noise_at_1").grid
    np.testing.assert_allclose(mirrored.signal, flow_grid.signal)
    np.testing.assert_allclose(mirrored.model_time, [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_array_equal(consistency.sample_positions(20, 4), [0, 5, 10, 15])
    with pytest.raises(ValueError, match="num_steps"):
        consistency.sample_positions(4, 8)


@pytest.mark.parametrize("sigma_data", [0.0, 0.5])
@pytest.mark.parametrize("parameterization", ["flow", "diffusion"])
def test_skip_scaling_boundary_conditions(unet, parameterization, sigma_data):
    """f(x, N) = x exactly at the data end, whatever the network, with or without the
    EDM skip term (σ_d = 0); at flow's noise end (a = 0) f is the network's data
    estimate alone."""
    apply_fn, params = unet
    settings = dict(time_scale=100.0, num_train_steps=20)
    family = consistency._family(parameterization, 2, 2, settings)
    # N = 2 intervals of k = 2 teacher steps: a fine grid of 5 points
    x = jax.random.normal(jax.random.key(1), (B, H, A))
    step_fn, context = models.split_apply_fn(apply_fn, params, _obs())
    at_data = consistency.consistency_fn(
        step_fn, params, context, x, jnp.full((B,), 4), family, sigma_data
    )
    np.testing.assert_allclose(at_data, x, atol=1e-6)
    if parameterization == "flow":
        at_noise = consistency.consistency_fn(
            step_fn, params, context, x, jnp.zeros((B,), jnp.int32), family, sigma_data
        )
        velocity = apply_fn(params, _obs(), x, jnp.zeros((B,)))
        np.testing.assert_allclose(at_noise, x + velocity, atol=1e-5)


def test_student_equal_to_its_teacher_on_one_bin_has_zero_loss(unet):
    """N = 1 (flow): the target is the teacher's one Euler step, x + v_T(x, 0), and the
    student's f(x, 0) = x + v_θ(x, 0): zero when θ = the teacher's weights; any other
    weights give a positive loss."""
    apply_fn, params = unet
    kwargs = dict(teacher_apply_fn=apply_fn, teacher_params=params, num_teacher_steps=1)
    value, _ = consistency.loss(apply_fn, params, _batch(), jax.random.key(2), **kwargs)
    assert float(value) < 1e-10
    # Two teacher sub-steps per interval: the target is the teacher's 2-step Euler
    # endpoint, which a student equal to the teacher (one jump) does not match.
    two, _ = consistency.loss(
        apply_fn, params, _batch(), jax.random.key(2), **kwargs, teacher_substeps=2
    )
    assert float(two) > 1e-8
    other = jax.tree.map(lambda p: p * 1.1, params)
    moved, _ = consistency.loss(apply_fn, other, _batch(), jax.random.key(2), **kwargs)
    assert float(moved) > 1e-6


def test_target_network_is_the_ema_unless_online(unet):
    apply_fn, params = unet
    ema = jax.tree.map(lambda p: p * 0.9, params)
    args = (apply_fn, params, _batch(), jax.random.key(3))
    kwargs = dict(teacher_apply_fn=apply_fn, teacher_params=params, num_teacher_steps=4)
    plain = consistency.loss(*args, **kwargs)[0]
    with_ema = consistency.loss(*args, ema_params=ema, **kwargs)[0]
    online = consistency.loss(*args, ema_params=ema, target="online", **kwargs)[0]
    assert not np.isclose(plain, with_ema)
    np.testing.assert_allclose(online, plain, rtol=1e-6)
    # The gradient flows into θ only (the EMA target is a constant).
    grads = jax.grad(lambda e: consistency.loss(*args, ema_params=e, **kwargs)[0])(ema)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads))


def test_one_step_sample_is_the_consistency_function_of_the_noise(unet):
    """S = 1 is one model call on the noise (no re-noising: the key is irrelevant);
    S = 2 re-noises in between, so its key matters."""
    apply_fn, params = unet
    objective = objectives.create_objective(
        {"name": "consistency", "parameterization": "flow", "num_teacher_steps": 4}, (H, A)
    )
    noise = jax.random.normal(jax.random.key(4), (B, H, A))
    one = objective.sample_from_noise(apply_fn, params, _obs(), jax.random.key(0), 1, noise)
    velocity = apply_fn(params, _obs(), noise, jnp.zeros((B,)))
    np.testing.assert_allclose(one, jnp.clip(noise + velocity, -1, 1), atol=1e-5)
    again = objective.sample_from_noise(apply_fn, params, _obs(), jax.random.key(9), 1, noise)
    np.testing.assert_array_equal(one, again)
    two = [
        objective.sample_from_noise(apply_fn, params, _obs(), jax.random.key(k), 2, noise)
        for k in (0, 9)
    ]
    assert not np.allclose(two[0], two[1])
    # Sampling needs no teacher; the loss does, and says so.
    assert objective.teacher_params is None and objective.uses_ema_params
    with pytest.raises(ValueError, match="needs its teacher"):
        objective.loss(apply_fn, params, _batch(), jax.random.key(0))
    with pytest.raises(ValueError, match="does not learn from a teacher"):
        objectives.create_objective({"name": "flow", "teacher_workdir": "t"}, (H, A))


def test_teacher_target_is_the_teachers_whole_remaining_trajectory(unet):
    """target="teacher": f_θ(x_n, n) is regressed on the teacher's ODE solved from x_n to
    the data end, (N - n) k Euler steps, computed here by hand per row; with N = 1 it is
    the bootstrapped loss (whose only interval ends at the data) exactly."""
    apply_fn, params = unet
    student = jax.tree.map(lambda p: p * 1.05, params)
    batch, rng = _batch(), jax.random.key(6)
    n_teacher, k = 3, 2
    kwargs = dict(teacher_apply_fn=apply_fn, teacher_params=params, teacher_substeps=k)
    value, _ = consistency.loss(
        apply_fn, student, batch, rng, target="teacher", num_teacher_steps=n_teacher, **kwargs
    )
    n_rng, eps_rng = jax.random.split(rng)
    n = np.asarray(jax.random.randint(n_rng, (B,), 0, n_teacher)) * k
    eps = jax.random.normal(eps_rng, (B, H, A))
    t = np.arange(n_teacher * k + 1) / (n_teacher * k)
    x_n = t[n][:, None, None] * batch[schema.ACTIONS] + (1 - t[n][:, None, None]) * eps
    expected = []
    for row in range(B):
        x = x_n[row : row + 1]
        obs = jax.tree.map(lambda o, r=row: o[r : r + 1], _obs())
        for i in range(n[row], n_teacher * k):
            x = x + (t[i + 1] - t[i]) * apply_fn(params, obs, x, jnp.full((1,), 100.0 * t[i]))
        velocity = apply_fn(student, obs, x_n[row : row + 1], jnp.full((1,), 100.0 * t[n[row]]))
        f = x_n[row : row + 1] + (1 - t[n[row]]) * velocity
        expected.append(jnp.mean((f - x) ** 2))
    np.testing.assert_allclose(value, np.mean(expected), rtol=1e-4)
    one = [
        consistency.loss(apply_fn, student, batch, rng, target=tg, num_teacher_steps=1, **kwargs)
        for tg in ("teacher", "online")
    ]
    np.testing.assert_allclose(one[0][0], one[1][0], rtol=1e-6)
    with pytest.raises(ValueError, match="needs a teacher"):
        consistency.loss(apply_fn, params, batch, rng, target="teacher", teacher_solver="data")


def test_consistency_training_needs_no_teacher_and_targets_the_data_at_the_end(unet):
    """teacher_solver="data" (consistency training): no teacher; the step is the one-sample
    estimate a_{n+1} x + b_{n+1} ε. With N = 1 the only interval ends at the data, so the
    target is the clean chunk itself: the loss is ||f_θ(ε, 0) - x||², computed here by
    hand from the same (position, ε) keys the loss draws."""
    apply_fn, params = unet
    objective = objectives.create_objective(
        {
            "name": "consistency",
            "parameterization": "flow",
            "teacher_solver": "data",
            "teacher_workdir": "",
            "num_teacher_steps": 1,
        },
        (H, A),
    )
    assert not objective.needs_teacher
    batch, rng = _batch(), jax.random.key(5)
    value, _ = objective.loss(apply_fn, params, batch, rng)
    eps = jax.random.normal(jax.random.split(rng)[1], (B, H, A))
    f_noise = eps + apply_fn(params, _obs(), eps, jnp.zeros((B,)))  # f(ε, 0), flow, σ_d = 0
    expected = jnp.mean((f_noise - batch[schema.ACTIONS]) ** 2)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # Inside the grid the target is the student's own (stop-gradient) jump from the
    # interpolant one interval later: finite, and differentiable in θ only through f(x_n).
    grads = jax.grad(
        lambda p: consistency.loss(
            apply_fn, p, batch, rng, teacher_solver="data", num_teacher_steps=4
        )[0]
    )(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


def test_student_must_keep_the_teachers_horizons_and_settings():
    teacher = compat.config_to_json_dict(consistency_unet_obstacle.get_config("tiny").teacher)
    student = compat.config_to_json_dict(consistency_unet_obstacle.get_config("tiny"))
    compat.check_distillation(teacher, student, "here")  # as built: compatible
    student["data"]["action_horizon"] = 8
    student["objective"]["time_scale"] = 1.0
    student["model"]["down_dims"] = [8, 16]
    with pytest.raises(ValueError) as error:
        compat.check_distillation(teacher, student, "here")
    for field in ("data.action_horizon", "objective.time_scale", "model.down_dims"):
        assert field in str(error.value)
    student = compat.config_to_json_dict(consistency_unet_obstacle.get_config("tiny"))
    student["objective"]["parameterization"] = "diffusion"
    with pytest.raises(ValueError, match="objective.parameterization"):
        compat.check_distillation(teacher, student, "here")


def _assert_teacher_is_the_plain_run(config, plain):
    """The distillation config's teacher is exactly `plain` (the teacher's own config for
    the same arg), and its student passes the teacher check."""
    assert config.teacher.to_dict() == plain.to_dict()
    compat.check_distillation(
        compat.config_to_json_dict(config.teacher),
        compat.config_to_json_dict(config),
        "here",
    )


def test_metaworld_distillation_config_keeps_its_teachers_run():
    """The Meta-World chain's teacher is exactly configs/flow_unet_metaworld.py's run for
    the same arg, and the student passes the teacher check (same data, model, horizons,
    unclipped sampling)."""
    from configs import consistency_unet_metaworld, flow_unet_metaworld

    config = consistency_unet_metaworld.get_config("task=reach,cpu,seed=1")
    plain = flow_unet_metaworld.get_config("task=reach,cpu,seed=1")
    _assert_teacher_is_the_plain_run(config, plain)
    assert config.objective.target == "teacher" and not config.objective.clip_sample
    assert config.train.num_steps == plain.train.num_steps * 3 // 2
    ddim = consistency_unet_metaworld.get_config("task=reach,runlocal,teacher=diffusion")
    assert ddim.teacher.objective.name == "diffusion" and ddim.objective.teacher_clip is False
    with pytest.raises(ValueError, match="teacher="):
        consistency_unet_metaworld.get_config("task=reach,teacher=tokens")


def test_pi0_distillation_config_keeps_its_teachers_run():
    """configs/consistency_pi0_obstacle.py: the teacher is exactly flow_pi0_obstacle.py's
    run for the same arg, the student passes the teacher check, starts from the teacher at
    a third of its learning rate, and `student_steps=` / the obstacle config's
    `student_steps=` set the student's steps only."""
    from configs import consistency_pi0_obstacle, flow_pi0_obstacle

    config = consistency_pi0_obstacle.get_config("runlocal,seed=2")
    plain = flow_pi0_obstacle.get_config("runlocal,seed=2")
    _assert_teacher_is_the_plain_run(config, plain)
    assert config.model.name == "pi0" and config.objective.name == "consistency"
    assert config.train.init_from_teacher and config.train.num_steps == 3_000
    assert config.optimizer.lr == pytest.approx(plain.optimizer.lr / 3)
    assert consistency_pi0_obstacle.get_config("smoke,student_steps=7").train.num_steps == 7
    longer = consistency_unet_obstacle.get_config("runlocal,student_steps=6000")
    default = consistency_unet_obstacle.get_config("runlocal")
    assert longer.train.num_steps == 6_000 and default.train.num_steps == 3_000
    longer.train.num_steps = default.train.num_steps
    assert longer.to_dict() == default.to_dict()
    with pytest.raises(ValueError, match="studentsteps"):
        consistency_unet_obstacle.get_config("runlocal,studentsteps=1")


def _tiny_chain_config():
    config = consistency_unet_obstacle.get_config("tiny")
    for run in (config, config.teacher):
        run.train.num_steps = 2
        run.data.num_demo_episodes = 4
        run.model.down_dims = (8,)
        run.model.time_embed_dim = 8
        run.model.n_groups = 4
    config.eval.num_episodes = 2
    config.eval.plot = False
    return config


def test_distillation_chain_teacher_student_one_step_eval(tmp_path):
    """`--mode=train_and_eval` on a distillation config: the teacher is trained in
    W/teacher on the student's data, the student in W starts from the teacher's EMA
    weights and keeps its norm stats, and the student is evaluated at 1 step. Training
    the teacher again reuses the finished one (nothing retrained)."""
    config = _tiny_chain_config()
    workdir = str(tmp_path / "w")
    summary = main.run(config, workdir, "train_and_eval")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results == summary
    assert results["num_sample_steps"] == 1 and results["objective"] == "consistency"
    episodes = results["episodes"]
    assert episodes == config.eval.num_episodes
    for key in ("success_rate", "collision_rate", "mode_left_fraction"):
        count = results[key] * episodes  # each is a count of the evaluated episodes
        assert count == pytest.approx(round(count)) and 0 <= round(count) <= episodes, key
    assert results["success_rate"] + results["collision_rate"] <= 1.0
    assert not os.path.exists(os.path.join(workdir, "teacher", "dataset"))  # shared data

    def metadata(path):
        manager = checkpoint.create_checkpoint_manager(path, read_only=True)
        return manager.all_steps(), checkpoint.restore_metadata(manager)

    teacher_steps, (teacher_config, teacher_stats) = metadata(f"{workdir}/teacher/checkpoints")
    student_steps, (student_config, student_stats) = metadata(f"{workdir}/checkpoints")
    assert student_stats == teacher_stats
    assert teacher_config["objective"]["name"] == "flow"
    assert student_config["objective"]["teacher_workdir"] == "teacher"
    assert main.train_teacher(config, workdir)  # a finished teacher is reused as it is
    assert metadata(f"{workdir}/teacher/checkpoints")[0] == teacher_steps
    assert student_steps == [2]
    # The 1-step eval keeps the most stable of the config's candidates; --mode=eval under
    # `eval.num_candidates` (linked to the objective's) overrides the checkpoint's value.
    assert results["num_candidates"] == consistency_unet_obstacle.CANDIDATES > 1
    config.eval.num_candidates = 1
    assert config.objective.num_candidates == 1
    assert main.run(config, workdir, "eval")["num_candidates"] == 1
    with pytest.raises(ValueError, match="'schedule' is not a sampling setting"):
        Policy.from_checkpoint(workdir, sampling={"schedule": "linear"})
    with pytest.raises(ValueError, match="does not take"):
        Policy.from_checkpoint(workdir, sampling={"eta": 0.5})  # a diffusion setting


def test_noise_at_1_teacher_target_is_its_own_ode_solution(unet):
    """A teacher in openpi's convention (t = 1 noise: the network sees 1 - t and predicts
    ε − x): the student's 2-step grid reads it in its own time, so the teacher target
    (target="teacher": the teacher's ODE solved from the noise end) equals the teacher's
    own sampler, flow.sample_from_noise(time_convention="noise_at_1"), from the same noise."""
    apply_fn, params = unet
    settings = {"time_scale": 1.0, "time_convention": "noise_at_1"}
    family = consistency._family("flow", 2, 1, settings)
    noise = jax.random.normal(jax.random.key(3), (B, H, A))
    step_fn, context = models.split_apply_fn(apply_fn, params, _obs())
    target = consistency._teacher_solve_to_data(
        step_fn, params, context, noise, jnp.zeros((B,), jnp.int32), family
    )
    own = flow.sample_from_noise(
        apply_fn, params, _obs(), jax.random.key(0), 2, noise,
        action_shape=(H, A), time_scale=1.0, time_convention="noise_at_1", clip_sample=False,
    )  # fmt: skip
    np.testing.assert_allclose(target, own, rtol=1e-6, atol=1e-6)
    # Read in the other convention the target would be a different trajectory.
    mirrored = consistency._family("flow", 2, 1, {"time_scale": 1.0})
    wrong = consistency._teacher_solve_to_data(
        step_fn, params, context, noise, jnp.zeros((B,), jnp.int32), mirrored
    )
    assert not np.allclose(wrong, own, atol=1e-3)
