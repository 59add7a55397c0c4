"""The consistency objective's multiple-choice head (`num_hypotheses` K > 1): the U-Net's
[B, K, H, A + 1] output, argmax selection in sampling, the relaxed winner-takes-all loss
and what it buys (no blends of two modes from a smooth network), and a student that
starts from its one-head teacher everywhere but the head."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from action_gen import compat, models, objectives
from action_gen.data import schema
from action_gen.objectives import consistency
from action_gen.train import state as state_lib
from action_gen.train import teacher as teacher_lib
from configs import consistency_unet_obstacle
from tests.objectives.test_consistency import UNET, A, B, H, _obs

K = 4  # hypotheses


def _model(num_hypotheses):
    config = ml_collections.ConfigDict({**UNET, "num_hypotheses": num_hypotheses})
    model = models.create_model(config)
    return model, models.init_params(model, jax.random.key(0), _obs(), (H, A))


def _flow_family(num_teacher_steps=2):
    return consistency._family("flow", num_teacher_steps, 1, {"time_scale": 100.0})


def test_unet_hypotheses_head_replaces_the_output_layer():
    """K > 1: `hypotheses_conv` (K (A + 1) channels) instead of `final_conv`, output
    [B, K, H, A + 1]; everything before the head is the one-head model's."""
    one_model, one = _model(1)
    many_model, many = _model(K)
    assert "final_conv" in one and "hypotheses_conv" not in one
    assert "hypotheses_conv" in many and "final_conv" not in many
    assert many["hypotheses_conv"]["kernel"].shape[-1] == K * (A + 1)
    trunk = {k: v for k, v in one.items() if k != "final_conv"}
    assert jax.tree.structure(trunk) == jax.tree.structure(
        {k: v for k, v in many.items() if k != "hypotheses_conv"}
    )
    x, t = jnp.zeros((B, H, A)), jnp.zeros((B,))
    assert one_model.apply({"params": one}, _obs(), x, t).shape == (B, H, A)
    assert many_model.apply({"params": many}, _obs(), x, t).shape == (B, K, H, A + 1)
    with pytest.raises(ValueError, match="num_hypotheses"):
        _model(0)


def test_sampling_takes_the_hypothesis_with_the_largest_logit():
    """f(x, 0) (flow, noise end) = x + v_k* with k* = argmax_k mean_h score_k: the
    1-step sample is that hypothesis, clipped."""
    model, params = _model(K)
    # Raise hypothesis 2's score so that it, not the first one, wins.
    bias = params["hypotheses_conv"]["bias"].reshape(K, A + 1).at[2, A].add(10.0)
    params = {**params, "hypotheses_conv": {**params["hypotheses_conv"], "bias": bias.ravel()}}
    apply_fn = models.make_apply_fn(model)
    noise = jax.random.normal(jax.random.key(4), (B, H, A))
    out = model.apply({"params": params}, _obs(), noise, jnp.zeros((B,)))
    best = np.argmax(np.asarray(out[..., A]).mean(axis=2), axis=1)  # [B]
    np.testing.assert_array_equal(best, 2)
    expected = np.clip(noise + np.asarray(out)[np.arange(B), best, :, :A], -1, 1)
    objective = objectives.create_objective(
        {
            "name": "consistency",
            "parameterization": "flow",
            "num_teacher_steps": 2,
            "num_hypotheses": K,
        },
        (H, A),
    )
    one = objective.sample_from_noise(apply_fn, params, _obs(), jax.random.key(0), 1, noise)
    np.testing.assert_allclose(one, expected, atol=1e-5)
    two = objective.sample(apply_fn, params, _obs(), jax.random.key(0), 2)
    assert two.shape == (B, H, A) and np.isfinite(two).all()
    step_fn, context = models.split_apply_fn(apply_fn, params, _obs())
    hypotheses, logits = consistency.consistency_hypotheses(
        step_fn, params, context, noise, jnp.zeros((B,), jnp.int32), _flow_family(), 0.0, K
    )
    assert hypotheses.shape == (B, K, H, A) and logits.shape == (B, K)
    np.testing.assert_allclose(
        consistency.select_hypothesis(hypotheses, logits),
        noise + out[np.arange(B), best, :, :A],
        atol=1e-5,
    )


def test_objective_and_model_must_agree_on_the_number_of_hypotheses():
    one_model, one = _model(1)
    many_model, many = _model(K)
    batch = {**_obs(), schema.ACTIONS: jnp.zeros((B, H, A))}
    for model, params, k in ((one_model, one, K), (many_model, many, 1), (many_model, many, 2)):
        apply_fn = models.make_apply_fn(model)
        with pytest.raises(ValueError, match=f"objective.num_hypotheses={k}"):
            consistency.loss(
                apply_fn,
                params,
                batch,
                jax.random.key(0),
                teacher_solver="data",  # no teacher needed to reach the check
                target="online",
                num_teacher_steps=2,
                num_hypotheses=k,
            )
    with pytest.raises(ValueError, match="hypothesis_relax"):
        consistency.loss(
            *(models.make_apply_fn(many_model), many, batch, jax.random.key(0)),
            teacher_solver="data",
            target="online",
            num_hypotheses=K,
            hypothesis_relax=1.0,
        )


def test_multiple_choice_loss_weights_the_winner_and_trains_the_score_on_it():
    """Example 0's target equals hypothesis 1 exactly, example 1's hypothesis 3: those win;
    the loss is (ε / (K - 1)) Σ_losers e_k / n_real + λ CE(logits, winner); padded steps
    count for nothing (their huge errors do not change the winner)."""
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, H, A)).astype(np.float32)
    hypotheses = rng.normal(size=(2, K, H, A)).astype(np.float32)
    hypotheses[0, 1], hypotheses[1, 3] = target[0], target[1]
    mask = np.ones((2, H), bool)
    mask[1, -2:] = False
    hypotheses[1, 3, -2:] += 100.0  # padding: must not matter
    logits = rng.normal(size=(2, K)).astype(np.float32)
    batch = {schema.ACTION_PAD_MASK: jnp.asarray(mask)}
    relax, weight = 0.1, 0.5
    value, aux = consistency.multiple_choice_loss(
        jnp.asarray(hypotheses),
        jnp.asarray(logits),
        jnp.asarray(target),
        batch,
        relax=relax,
        score_weight=weight,
    )
    w = mask[:, None, :, None].astype(np.float32)
    squared = np.sum(w * (hypotheses - target[:, None]) ** 2, axis=(2, 3))  # [2, K]
    winners = np.array([1, 3])
    np.testing.assert_array_equal(np.argmin(squared, axis=1), winners)
    n_real = mask.sum() * A
    losers = squared.sum(axis=1) - squared[np.arange(2), winners]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -np.mean(log_softmax[np.arange(2), winners])
    expected = np.sum(relax / (K - 1) * losers) / n_real + weight * ce
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], 0.0, atol=1e-7)
    np.testing.assert_allclose(aux["score_ce"], ce, rtol=1e-5)
    expected_accuracy = np.mean(np.argmax(logits, axis=1) == winners)
    np.testing.assert_allclose(aux["score_accuracy"], expected_accuracy)
    np.testing.assert_allclose(aux["top_winner_share"], 0.5)  # one win each


def _fit_step_function(num_hypotheses, steps=1500):
    """A small MLP fitted to the discontinuous map u -> sign(u) (u ~ U[-1, 1], one
    'chunk' value per input), as a 1-head L2 regressor (K = 1) or with the multiple-choice
    loss; returns its predictions on a fine grid of u."""
    out_dim = 1 if num_hypotheses == 1 else num_hypotheses * 2
    sizes = [1, 32, 32, out_dim]
    keys = jax.random.split(jax.random.key(0), len(sizes))
    params = [
        (jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=False)
    ]

    def forward(params, u):  # -> hypotheses [N, K, 1, 1], logits [N, K]
        h = u[:, None]
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        w, b = params[-1]
        out = (h @ w + b).reshape(u.shape[0], num_hypotheses, -1)
        logits = out[..., 1] if num_hypotheses > 1 else jnp.zeros(out.shape[:2])
        return out[..., :1, None], logits

    def loss(params, u):
        hypotheses, logits = forward(params, u)
        target = jnp.sign(u)[:, None, None]
        if num_hypotheses == 1:
            return jnp.mean((hypotheses[:, 0] - target) ** 2)
        return consistency.multiple_choice_loss(
            hypotheses, logits, target, {}, relax=0.05, score_weight=0.1
        )[0]

    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        u = jax.random.uniform(key, (256,), minval=-1.0, maxval=1.0)
        grads = jax.grad(loss)(params, u)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for key in jax.random.split(jax.random.key(1), steps):
        params, opt_state = step(params, opt_state, key)
    grid = jnp.linspace(-1.0, 1.0, 4001)
    hypotheses, logits = forward(params, grid)
    return np.asarray(consistency.select_hypothesis(hypotheses, logits))[:, 0, 0], np.asarray(grid)


def test_multiple_choice_removes_the_blend_band_of_a_smooth_regressor():
    """On u -> sign(u) the L2 regressor passes through every value between -1 and 1 near
    u = 0 (a band of blends); the 2-hypothesis model jumps: almost no output lands away
    from ±1, and the switch sits at the discontinuity."""
    plain, grid = _fit_step_function(1)
    chosen, _ = _fit_step_function(2)
    blends = lambda y: np.mean(np.abs(y) < 0.5)  # noqa: E731
    assert blends(plain) > 0.005  # the smooth fit's band
    assert blends(chosen) < blends(plain) / 5
    assert np.mean(np.abs(chosen - np.sign(grid)) < 0.1) > 0.97
    switch = grid[np.argmax(chosen > 0)]
    assert abs(switch) < 0.05


def test_student_with_a_head_of_its_own_starts_from_its_teacher(tmp_path):
    """`hypotheses=K`: the student config sets K on both the model and the objective, the
    teacher check accepts that one model difference (and no other), and
    `init_from_teacher` copies every parameter both have and starts each hypothesis as a
    noisy copy of the teacher's output layer with a zero score: at init every hypothesis
    is (nearly) the teacher, and all logits tie."""
    config = consistency_unet_obstacle.get_config(f"tiny,hypotheses={K}")
    assert config.model.num_hypotheses == K and config.objective.num_hypotheses == K
    assert "num_hypotheses" not in config.teacher.model
    teacher_json = compat.config_to_json_dict(config.teacher)
    student_json = compat.config_to_json_dict(config)
    compat.check_distillation(teacher_json, student_json, "here")
    student_json["model"]["time_embed_dim"] = 12
    with pytest.raises(ValueError, match="model.time_embed_dim"):
        compat.check_distillation(teacher_json, student_json, "here")

    _, teacher_params = _model(1)
    teacher_params = jax.tree.map(lambda p: p + 1.0, teacher_params)  # unlike a fresh init
    _, student_params = _model(K)
    fresh = state_lib.create_train_state(student_params, optax.adam(1e-3))
    loaded = teacher_lib.LoadedTeacher(
        teacher=objectives.Teacher(None, teacher_params),
        config={},
        norm_stats={},
        directory=str(tmp_path),
    )
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: sharding, fresh)
    state = teacher_lib.init_from_teacher(fresh, loaded, shardings, jax.random.key(3))
    output = teacher_params["final_conv"]
    for tree in (state.params, state.ema_params):
        assert "final_conv" not in tree
        head = {k: np.asarray(v) for k, v in tree["hypotheses_conv"].items()}
        kernel = head["kernel"].reshape(*output["kernel"].shape[:2], K, A + 1)
        bias = head["bias"].reshape(K, A + 1)
        np.testing.assert_array_equal(kernel[..., A], 0.0)  # scores: zero
        np.testing.assert_array_equal(bias[:, A], 0.0)
        np.testing.assert_array_equal(bias[:, :A], np.tile(output["bias"], (K, 1)))
        offsets = kernel[..., :A] - np.asarray(output["kernel"])[:, :, None]
        scale = np.std(np.asarray(output["kernel"]))
        assert 0 < np.abs(offsets).max() < 0.1 * scale  # small noise: copies, all distinct
        assert not np.allclose(offsets[:, :, 0], offsets[:, :, 1])
        shared = {k: v for k, v in teacher_params.items() if k != "final_conv"}
        jax.tree.map(np.testing.assert_array_equal, {k: tree[k] for k in shared}, shared)
    # At init, every hypothesis's output is the teacher's to within the noise (1%).
    teacher_model, _ = _model(1)
    student_model, _ = _model(K)
    x, t = jax.random.normal(jax.random.key(5), (B, H, A)), jnp.full((B,), 10.0)
    teacher_out = teacher_model.apply({"params": teacher_params}, _obs(), x, t)
    student_out = student_model.apply({"params": state.params}, _obs(), x, t)
    np.testing.assert_allclose(
        student_out[..., :A], np.broadcast_to(teacher_out[:, None], (B, K, H, A)), rtol=1e-2
    )
    narrower = jax.tree.map(lambda p: p[..., :1], teacher_params["time_mlp"])
    wrong = dataclasses.replace(
        loaded, teacher=objectives.Teacher(None, {**teacher_params, "time_mlp": narrower})
    )
    with pytest.raises(ValueError, match="time_mlp"):
        teacher_lib.init_from_teacher(fresh, wrong, shardings, jax.random.key(3))
