"""The compiled training program of a config: model, objective, optimizer, and the sharded,
jitted init and step built from them.

One builder for every caller (the train loop, `benchmarks/train_throughput.py`, the
sharding and multi-host tests), so what is benchmarked and tested is what trains.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import ml_collections
import optax
from flax import linen as nn

from action_gen import models, objectives
from action_gen.train import sharding
from action_gen.train.optimizer import create_optimizer
from action_gen.train.state import TrainState, create_train_state
from action_gen.train.step import step_options, train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """What `build_train_program` returns.

    Attributes:
      init_fn: key -> TrainState, jitted, its output laid out by `state_shardings`.
      step_fn: (state, global batch, key) -> (state, metrics), jitted; donates the state.
      abstract_state: the TrainState's shapes and dtypes (no memory).
      state_shardings, batch_sharding, replicated: the layouts on the mesh.
      model, objective, tx, lr_schedule: the pieces the program was built from.
    """

    init_fn: Callable[[jax.Array], TrainState]
    step_fn: Callable
    abstract_state: TrainState
    state_shardings: TrainState
    batch_sharding: jax.sharding.Sharding
    replicated: jax.sharding.Sharding
    model: nn.Module
    objective: object
    tx: optax.GradientTransformation
    lr_schedule: Callable


def build_train_program(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    example_obs: Mapping,
    action_shape: tuple[int, int],
    teacher: objectives.Teacher | None = None,
) -> TrainProgram:
    """Builds `config`'s training program on `mesh`.

    Args:
      config: uses `model`, `objective`, `optimizer`, `train` (num_steps, EMA, and the
        step options of `step.step_options`) and `mesh` (its sharding rules).
      mesh: from `sharding.create_mesh`.
      example_obs: a batched observation with the model's keys and shapes
        (`spec.example_observation`); it fixes the parameter shapes.
      action_shape: (H, A) of the model's action chunk.
      teacher: a distillation objective's teacher (train/teacher.py); its parameters are
        an explicit, replicated argument of the compiled step (not constants in it).
    """
    model = models.create_model(config.model)
    objective = objectives.create_objective(config.objective, action_shape, teacher=teacher)
    tx, lr_schedule = create_optimizer(config.optimizer, config.train.num_steps)

    def init_state(key):
        params = models.init_params(model, key, example_obs, action_shape)
        return create_train_state(params, tx)

    abstract_state = jax.eval_shape(init_state, jax.random.key(0))
    logical_axes = models.param_logical_axes(model, example_obs, action_shape)
    state_shardings = sharding.state_sharding_from_config(
        config.mesh, mesh, abstract_state, logical_axes
    )
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated_sharding(mesh)
    step = functools.partial(
        train_step,
        apply_fn=models.make_apply_fn(model),
        tx=tx,
        lr_schedule=lr_schedule,
        ema_power=config.train.get("ema_power", 0.75),
        ema_max_decay=config.train.get("ema_max_decay", 0.9999),
        pass_ema_params=objective.uses_ema_params,
        **step_options(config.train),
    )
    if objective.teacher_params is None:
        step_fn = jax.jit(
            functools.partial(step, loss_fn=objective.loss),
            in_shardings=(state_shardings, batch_sharding, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )
    else:
        step_with_teacher = jax.jit(
            lambda state, batch, key, teacher_params: step(
                state,
                batch,
                key,
                loss_fn=functools.partial(objective.loss, teacher_params=teacher_params),
            ),
            in_shardings=(state_shardings, batch_sharding, replicated, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )
        teacher_params = jax.device_put(objective.teacher_params, replicated)

        def step_fn(state, batch, key):
            return step_with_teacher(state, batch, key, teacher_params)

    return TrainProgram(
        init_fn=jax.jit(init_state, out_shardings=state_shardings),
        step_fn=step_fn,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        replicated=replicated,
        model=model,
        objective=objective,
        tx=tx,
        lr_schedule=lr_schedule,
    )
