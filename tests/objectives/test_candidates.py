"""Best-of-M sampling by stability (objectives/from_noise.py `select_stable_candidate`):
the choice is the least sensitive of M candidates, both evaluations of a candidate share
its sampler key, it removes the blends of a steep map without moving the modes' shares,
and every noise-to-chunk objective takes it as a sampling setting."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models, objectives
from action_gen.data import schema
from action_gen.objectives import from_noise

B, T, S, H, A = 4, 2, 5, 8, 2
UNET = {"name": "unet1d", "down_dims": (8,), "time_embed_dim": 8, "n_groups": 4}


def _step_map(key, noise):
    """A smooth stand-in for a one-step bimodal map: every entry of row b is
    tanh(5 x[b, 0, 0]) (mode ±1, blends near x = 0), plus a little key-dependent noise
    as a stochastic sampler would add. [B, H, A] -> [B, H, A]."""
    mode = jnp.tanh(5.0 * noise[:, :1, :1])
    return jnp.broadcast_to(mode, noise.shape) + 0.01 * jax.random.normal(key, noise.shape)


def test_picks_the_least_sensitive_candidate_with_shared_keys():
    """The chunk equals a by-hand loop over candidates: the key splits of the docstring,
    the direction scaled to RMS 1 per chunk, both evaluations under the candidate's key,
    and the argmin of the mean squared change."""
    rng, m, delta, shape = jax.random.key(3), 5, 0.2, (6, H, A)
    chosen = jax.jit(
        lambda r: from_noise.select_stable_candidate(
            _step_map, r, shape, num_candidates=m, perturbation=delta
        )
    )(rng)
    noise_rng, direction_rng, run_rng = jax.random.split(rng, 3)
    noise = np.asarray(jax.random.normal(noise_rng, (m, *shape)))
    direction = np.asarray(jax.random.normal(direction_rng, (m, *shape)))
    direction = direction / np.sqrt(np.mean(direction**2, axis=(-2, -1), keepdims=True))
    keys = jax.random.split(run_rng, m)
    chunks, scores = [], []
    for i in range(m):
        base = np.asarray(_step_map(keys[i], jnp.asarray(noise[i])))
        moved = np.asarray(_step_map(keys[i], jnp.asarray(noise[i] + delta * direction[i])))
        chunks.append(base)
        scores.append(np.mean((moved - base) ** 2, axis=(-2, -1)))
    best = np.argmin(np.stack(scores), axis=0)  # [B]
    expected = np.stack([chunks[best[b]][b] for b in range(shape[0])])
    np.testing.assert_allclose(chosen, expected, atol=1e-5)
    assert chosen.shape == shape and len(set(best.tolist())) > 1  # per-row choices
    # Shared keys: the key-dependent part cancels, so a noise-independent stochastic map
    # scores every candidate 0 and the first is kept.
    flat = from_noise.select_stable_candidate(
        lambda k, x: jax.random.normal(k, x.shape),
        rng,
        shape,
        num_candidates=m,
        perturbation=delta,
    )
    np.testing.assert_allclose(flat, jax.random.normal(keys[0], shape), atol=1e-6)


def test_removes_blends_and_keeps_the_modes_shares():
    """On the stand-in map, 1 candidate leaves ≈ 9% of rows between the modes (|chunk| <
    0.5 at |x| < 0.11); the most stable of 4 leaves well under 1%, and each mode keeps ≈
    half the rows."""
    shape = (4000, H, A)
    plain = _step_map(jax.random.key(0), jax.random.normal(jax.random.key(1), shape))
    chosen = from_noise.select_stable_candidate(
        _step_map, jax.random.key(2), shape, num_candidates=4, perturbation=0.1
    )

    def blends(chunks):
        return float(np.mean(np.abs(np.asarray(chunks)[:, 0, 0]) < 0.5))

    assert 0.06 < blends(plain) < 0.12
    assert blends(chosen) < 0.005
    assert 0.45 < float(np.mean(np.asarray(chosen)[:, 0, 0] > 0)) < 0.55


def test_refuses_meaningless_settings():
    for m, delta in ((1, 0.1), (0, 0.1), (4, 0.0), (4, -1.0)):
        with pytest.raises(ValueError, match="candidate"):
            from_noise.select_stable_candidate(
                _step_map, jax.random.key(0), (2, H, A), num_candidates=m, perturbation=delta
            )


def _obs():
    rng = np.random.default_rng(0)
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((B, T), bool),
    }


@pytest.mark.parametrize(
    "config",
    [
        dict(name="consistency", parameterization="flow", num_teacher_steps=4),
        dict(name="flow", integrator="euler"),
        dict(name="diffusion", sampler="ddim", num_train_steps=20),
    ],
    ids=lambda c: c["name"],
)
def test_every_noise_objective_takes_it_as_a_sampling_setting(config):
    """`num_candidates` / `candidate_perturbation` are sampling-only fields of every
    objective built on from_noise.sampler (a checkpoint may be evaluated under other
    values); M = 1 is the plain sampler, M > 1 one jitted program whose rows are each one
    of the candidates' plain chunks (the objective's own sampler from that noise)."""
    assert {"num_candidates", "candidate_perturbation"} <= objectives.SAMPLING_FIELDS
    model = models.create_model(ml_collections.ConfigDict(UNET))
    params = models.init_params(model, jax.random.key(0), _obs(), (H, A))
    apply_fn = models.make_apply_fn(model)

    def objective(m):
        return objectives.create_objective(
            ml_collections.ConfigDict({**config, "num_candidates": m}), (H, A)
        )

    plain, best_of_3 = objective(1), objective(3)
    assert best_of_3.sampling_settings["num_candidates"] == 3
    assert best_of_3.sampling_settings["candidate_perturbation"] == 0.1
    rng, steps = jax.random.key(4), 2
    chosen = jax.jit(lambda r: best_of_3.sample(apply_fn, params, _obs(), r, steps))(rng)
    assert chosen.shape == (B, H, A) and np.isfinite(chosen).all()
    # Each row is the plain sampler's chunk from one of the 3 candidate noises.
    noise_rng, _, run_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, (3, B, H, A))
    keys = jax.random.split(run_rng, 3)
    candidates = np.stack(
        [
            plain.sample_from_noise(apply_fn, params, _obs(), keys[i], steps, noise[i])
            for i in range(3)
        ]
    )  # [M, B, H, A]
    distance = np.abs(candidates - np.asarray(chosen)[None]).max(axis=(-2, -1))  # [M, B]
    assert (distance.min(axis=0) < 1e-4).all()
