"""π0 end to end on the language-conditioned task: prompts tokenized, actions padded to the
model's 32 dims for training and cut back to the task's 2 at inference."""

import numpy as np
import pytest

from action_gen.data import schema
from action_gen.envs import collect, obstacle
from action_gen.train import loop
from configs import flow_pi0_obstacle


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pi0")
    config = flow_pi0_obstacle.get_config("smoke")
    config.data.dataset_dir = str(root / "dataset")
    collect.collect_builtin_datasets(config.data, str(root / "run"))
    state = loop.train(config, str(root / "run"))
    assert int(state.step) == config.train.num_steps
    # The token embedding exists (the prompt reached the model) and actions have 32 dims.
    assert state.params["token_embedding"]["embedding"].shape[0] == 259
    assert state.params["action_out"]["kernel"].shape[-1] == 32
    return str(root / "run")


def test_policy_from_checkpoint_follows_the_spec(workdir):
    from action_gen.sample.policy import Policy

    policy = Policy.from_checkpoint(workdir)
    assert policy.observation_spec == {
        schema.OBS_STATE: ((2, obstacle.STATE_DIM), "float32"),
        schema.PROMPT: ((), "string"),
    }
    assert policy.action_shape == (16, 2)
    env = obstacle.ObstacleVecEnv(3, instructed=True)
    obs, info = env.reset(seed=0)
    observation = {
        schema.OBS_STATE: np.repeat(obs[:, None], 2, axis=1),
        schema.PROMPT: info["instruction"],
    }
    actions = policy.sample_actions(observation, 0)
    assert actions.shape == (3, 16, 2) and np.isfinite(actions).all()
    np.testing.assert_array_equal(actions, policy.sample_actions(observation, 0))
    with pytest.raises(KeyError, match="prompt"):
        policy.sample_actions({schema.OBS_STATE: observation[schema.OBS_STATE]}, 0)


def test_pi0_size_config_builds_abstractly():
    """The real-size variant of the config (2.7 B parameters, bf16): shapes only."""
    import jax

    from action_gen import models
    from action_gen.data import spec

    config = flow_pi0_obstacle.get_config("pi0")
    model = models.create_model(config.model)
    example = spec.example_observation(spec.observation_spec(config.data, obstacle.STATE_DIM))
    params = jax.eval_shape(
        lambda key: models.init_params(model, key, example, (16, config.model.action_dim)),
        jax.random.key(0),
    )
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count > 2.7e9 and params["token_embedding"]["embedding"].shape == (257_152, 2048)
    assert all(x.dtype == jax.numpy.float32 for x in jax.tree.leaves(params))
