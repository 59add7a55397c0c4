"""Built-in tasks and simulator adapters, chosen by name."""

from collections.abc import Callable

from action_gen.envs import aloha, metaworld, obstacle

# name -> constructor(num_envs) of a vector env following the ObstacleVecEnv contract
# (seeded reset per env, no auto-reset, `info["success"]` / `info["collision"]`).
VECTOR_ENVS: dict[str, Callable] = {
    "obstacle": lambda num_envs, **kw: obstacle.ObstacleVecEnv(num_envs, **kw),
    # Each episode's instruction names the side to take (info["instruction"] at reset).
    "obstacle_language": lambda num_envs, **kw: obstacle.ObstacleVecEnv(
        num_envs, instructed=True, **kw
    ),
}


def make_vector_env(name: str, num_envs: int, **kwargs):
    """A vector env of `num_envs` copies of task `name`.

    "metaworld:<task>[@<camera>:<size>]" names any Meta-World task (envs/metaworld.py);
    "aloha_<task>[+env_state][@<camera>:<h>x<w>]" an ALOHA sim task (envs/aloha.py:
    aloha_transfer_cube, aloha_insertion).
    """
    if name.startswith(metaworld.SPEC_PREFIX):
        return metaworld.make_vector_env(name, num_envs, **kwargs)
    if aloha.is_spec(name):
        return aloha.make_vector_env(name, num_envs, **kwargs)
    if kwargs.get("record") is not None:
        raise ValueError(
            f"env {name!r} cannot film episodes (record=); Meta-World and ALOHA envs can"
        )
    kwargs.pop("record", None)
    if name not in VECTOR_ENVS:
        known = sorted(VECTOR_ENVS) + [aloha.SPEC_PREFIX + t for t in aloha.TASKS]
        raise ValueError(
            f"unknown env {name!r}; known: {known}, or 'metaworld:<task>' for any Meta-World task"
        )
    return VECTOR_ENVS[name](num_envs, **kwargs)
