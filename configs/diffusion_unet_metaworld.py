"""Diffusion Policy (conditional 1-D U-Net, DDIM) on any Meta-World task, from expert demos.

One run collects the scripted expert's demos if the dataset is missing (50 successful
episodes, demo seeds from base seed 0), trains, and evaluates 50 episodes whose seeds
(base 100000) are disjoint from the demo seeds; results.json holds the success rate with
its 95% Wilson interval:

  python -m action_gen.main --config=configs/diffusion_unet_metaworld.py:task=push,cpu \
      --workdir=/tmp/dp_mw_push --mode=train_and_eval

Arg (comma-separated; the part after ':'):
  task=NAME        any Meta-World task ("reach", "drawer-close", "push-v3"); default push.
  task=A+B+...     a multi-task policy: one network over the tasks' mixed demos (equal
                   weights, joint normalization), conditioned on each task's instruction
                   (models/text.py); evaluated on every task, results.json has the mean.
  image=CAM:SIZE   image observations: camera CAM rendered at SIZE x SIZE plus the robot's
                   proprioception (no object state); ResNet18-GN + spatial softmax encoder,
                   random 84/96 crop in training, center crop at eval.
  cpu              CPU scale (U-Net (64, 128, 256), batch 128, 2k steps): what the
                   BUILD_NOTES numbers used. With image=: ResNet (1, 1, 1, 1) blocks at
                   width 16, batch 64.
  runlocal, smoke  tiny, a handful of steps, 2 demos, 2 eval episodes: a smoke test.
  demos=N, steps=N, seed=N   overrides.
  post_success=N   keep N expert steps past each demo's first success (default 0: demos
                   end at success); its own data.dataset_dir, as the demos differ.
  (none)           DP's published low-dim sizes: U-Net (256, 512, 1024), batch 256.

Diffusion and flow sample unclipped here (objective.clip_sample = False, see below); the
env clips each action to its action space.
"""

import ml_collections

from configs import common

DEFAULT_TASK = "push"
_VARIANTS = {"cpu", "runlocal", "smoke"}


def metaworld_config(objective: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """A U-Net policy with objective `objective` on the Meta-World task named in `arg`."""
    flags, values = common.parse_arg(arg)
    unknown = flags - _VARIANTS
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; use {sorted(_VARIANTS)}")
    if "smoke" in flags:  # every config's name for its few-second check: here runlocal
        flags = (flags - {"smoke"}) | {"runlocal"}
    tasks = [t for t in values.get("task", DEFAULT_TASK).split("+") if t]
    if not tasks:
        raise ValueError("task= names no task; e.g. task=push or task=reach+push")
    image = values.get("image", "")
    # The obstacle builder gives the shared sections (optimizer, train, mesh, objective);
    # everything task-specific is overridden below.
    base = ",".join(
        ["runlocal"] * ("runlocal" in flags)
        + ["demo"] * ("cpu" in flags)
        + [f"seed={values.get('seed', 0)}"]
    )
    config = common.obstacle_config(objective, base)

    env_names = [f"metaworld:{task}" + (f"@{image}" if image else "") for task in tasks]
    env = env_names[0] if len(env_names) == 1 else env_names
    # A task (or list of tasks) whose demos are collected into data.dataset_dir if missing.
    del config.data.builtin_task, config.eval.env  # str in the base config; may be a list
    config.data.builtin_task = env
    if len(env_names) > 1:
        config.data.weights = [1.0] * len(env_names)
        config.data.prompt_max_len = 64  # bytes; Meta-World's instructions are <= 42
        config.data.tokenizer = "bytes"
        config.model.vocab_size = 259
        config.model.instruction_features = 64
        config.model.instruction_layers = 1
    config.data.num_demo_episodes = int(values.get("demos", 2 if "runlocal" in flags else 50))
    config.data.demo_seed = 0
    # Expert steps kept past each demo's first success (envs/metaworld.expert_episodes).
    config.data.demo_post_success_steps = int(values.get("post_success", 0))
    config.data.state_norm = "minmax"
    config.data.action_norm = "minmax"
    if "clip_sample" in config.objective:  # diffusion, flow
        # Sample unclipped; the env clips to its own action space ([-1, 1]^4). Clipping
        # the normalized chunk to [-1, 1] would bound every action by the demos' range,
        # and demos that end at first success are one-signed on the approach axis (reach:
        # y >= 0.068), so a clipped policy can neither stop nor back up once it is past
        # the goal. BUILD_NOTES, "Reach": +3.5 points (diffusion) on 200 episodes.
        config.objective.clip_sample = False
    config.data.validate = True
    if image:
        camera, size = image.split(":")
        # What the model receives (raw frames; the encoder crops them).
        config.data.cameras = {camera: [int(size), int(size)]}
        crop = int(round(int(size) * 84 / 96))  # DP: 84 of 96
        config.data.image_crop = [crop, crop]  # random crop in tf.data (training only)
        config.model.image_crop = [crop, crop]  # center crop in the model (identity in training)
        config.model.image_features = 64  # per camera: spatial softmax (32 kp) -> Linear(64)
        config.model.num_keypoints = 32
        config.model.resnet_width = 64  # ResNet18's stem width

    config.eval.env = env
    config.eval.num_episodes = 50
    config.eval.num_envs = 10  # simulator instances; episodes run in rounds
    config.eval.seed = 100_000  # demo seeds derive from data.demo_seed = 0: disjoint
    config.eval.action_exec_horizon = 8
    config.eval.max_steps = None  # Meta-World's own limit (500 steps); success ends early
    config.eval.plot = False  # the obstacle plot means nothing here
    # Film the first 3 evaluation episodes per task (rollouts.gif + frames.png).
    config.eval.record = "corner2:128"
    config.eval.record_episodes = 3

    if "cpu" in flags:  # the obstacle `demo` sizes: U-Net (64, 128, 256), batch 128, lr 1e-3
        config.train.num_steps = 2_000
        config.train.checkpoint_every = 1_000
    if "cpu" in flags and image:
        # A CPU-sized image policy (ResNet18-GN at width 64 is ~10 s per step on 2 cores):
        # ResNet with one block per stage at width 16, batch 64; same recipe otherwise.
        config.model.resnet_width = 16
        config.model.resnet_blocks = [1, 1, 1, 1]
        config.data.batch_size = 64
        config.data.shuffle_buffer = 5_000  # windows of frames are large
    if "runlocal" in flags:
        config.data.shuffle_buffer = 256
        config.eval.num_episodes = 2
        config.eval.num_envs = 2
        config.eval.max_steps = 24
        config.eval.record = ""
        if image:
            config.model.image_features = 8
            config.model.num_keypoints = 4
            config.model.resnet_width = 8
            config.model.resnet_blocks = [1, 1]
    if "steps" in values:
        config.train.num_steps = int(values["steps"])
    return config


def get_config(arg=None):
    return metaworld_config("diffusion", arg)
