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
from action_gen.models import lora
from action_gen.train import lora as train_lora
from action_gen.train import sharding
from action_gen.train.optimizer import create_optimizer
from action_gen.train.state import TrainState, create_train_state
from action_gen.train.step import step_options, train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """What `build_train_program` returns.

    Attributes:
      init_fn: key -> TrainState, jitted, its output laid out by `state_shardings`.
      init_from_fn: (model params, key) -> TrainState: the same from given (pretrained)
        model parameters, e.g. `train.init_from`'s; abstract_model_params: their shapes,
        dtypes (as initialised) and shardings on the mesh.
      layout: the fine-tuning layout (`models.lora.FinetuneLayout`: LoRA, frozen leaves);
        trainable: its trainable mask over the state's params (None: all train).
      step_fn: (state, global batch, key) -> (state, metrics), jitted; donates the state.
      abstract_state: the TrainState's shapes and dtypes (no memory).
      state_shardings, batch_sharding, replicated: the layouts on the mesh.
      model, objective, tx, lr_schedule: the pieces the program was built from.
    """

    init_fn: Callable[[jax.Array], TrainState]
    init_from_fn: Callable[[object, jax.Array], TrainState]
    abstract_model_params: object
    layout: lora.FinetuneLayout
    trainable: object
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
    # Fine-tuning layout (models/lora.py): LoRA adapters and/or frozen leaves; the identity
    # for ordinary training, which then runs exactly as without it.
    layout = lora.FinetuneLayout.from_config(config)
    abstract_model = models.abstract_params(model, example_obs, action_shape)
    abstract_train = jax.eval_shape(
        lambda p: lora.init_train_params(p, layout, jax.random.key(0)), abstract_model
    )
    trainable = None if layout.is_identity else lora.trainable_mask(abstract_train, layout)
    tx, lr_schedule = create_optimizer(config.optimizer, config.train.num_steps, trainable)

    def init_from(model_params, key):
        params = lora.init_train_params(model_params, layout, jax.random.fold_in(key, 1))
        return create_train_state(params, tx, trainable)

    def init_state(key):
        return init_from(models.init_params(model, key, example_obs, action_shape), key)

    abstract_state = jax.eval_shape(init_state, jax.random.key(0))
    logical_axes = train_lora.train_logical_axes(
        models.param_logical_axes(model, example_obs, action_shape), abstract_train, layout
    )
    state_shardings = sharding.state_sharding_from_config(
        config.mesh, mesh, abstract_state, logical_axes
    )
    model_param_shardings = state_shardings.params
    if layout.uses_lora:
        model_param_shardings = model_param_shardings[lora.BASE]
    abstract_model = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_model,
        model_param_shardings,
    )
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = sharding.replicated_sharding(mesh)
    step = functools.partial(
        train_step,
        apply_fn=lora.wrap_apply_fn(models.make_apply_fn(model), layout),
        tx=tx,
        lr_schedule=lr_schedule,
        ema_power=config.train.ema_power,
        ema_max_decay=config.train.ema_max_decay,
        pass_ema_params=objective.uses_ema_params,
        trainable=trainable,
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
        init_from_fn=jax.jit(init_from, out_shardings=state_shardings),
        abstract_model_params=abstract_model,
        layout=layout,
        trainable=trainable,
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
