"""Diffusion Policy (conditional 1-D U-Net, DDIM) on the bimanual ALOHA sim tasks
(gym-aloha's transfer-cube and insertion, 14-d joint-position actions at 50 Hz), trained on
our scripted demos recorded as a LeRobot v3.0 dataset (envs/aloha.py). Two commands per row:

  # 1. demos (LeRobot layout of lerobot/aloha_sim_transfer_cube_scripted; state variant:
  #    object poses in the state, no camera)
  python -m action_gen.envs.collect --env=aloha_transfer_cube --episodes=50 \
      --image=none --environment_state --out=/tmp/aloha_demos
  # 2. train, then evaluate 100 episodes (eval seeds: the dev split, eval/seed_splits.py;
  #    report with --config.eval.seed=200000)
  python -m action_gen.main --config=configs/diffusion_unet_aloha.py:task=transfer_cube,state \
      --workdir=/tmp/dp_aloha_tc_state --mode=train_and_eval

The run reads the dataset at `<demos>/<envs.aloha.dataset_name(spec)>` (demos=DIR, default
/tmp/aloha_demos: collect's --out), which the data step converts once to RLDS in the workdir
(the same path as any LeRobot dataset, data/lerobot.py).

Arg (comma-separated; the part after ':'):
  task=NAME        transfer_cube (default) or insertion.
  state            (default) state policy: the 14 joint positions plus the objects' poses
                   from the physics (`+env_state`: S = 21 / 28). A documented choice: the
                   public datasets have no object state; these rows are reported apart from
                   the image rows.
  image, image=HxW image policy: the top camera at H x W (collect with --image=top:HxW) plus
                   the 14 joint positions; ResNet18-GN + spatial softmax, DP's random crop
                   (84/96 of the frame) in training, center crop at eval. Default size
                   240x320 (half of gym-aloha's 480x640: the cube is ~10 px wide there).
  openpi_client    (with image) the row behind the server, for openpi's ALOHA-sim client
                   (examples/aloha_sim: `images/cam_high` CHW uint8, the 480x640 frame
                   letterboxed into 224x224 by resize_with_pad, and `state` [14]): frames are
                   letterboxed into a W x W square in training as that client does (openpi's
                   own convention, so the model sees the same geometry from the recording and
                   from the client; an evaluation frame is letterboxed the same way), and
                   config.robot declares the client's dict, so `--mode=serve` answers it
                   (absolute joint actions, gym-aloha's joint convention).
  chunk=N, exec=N  the action chunk H (default 16; ACT: 100) and the actions executed of
                   each before re-planning (default H/2; receding horizon). H must be a
                   multiple of 4 (the U-Net's three levels).
  ensemble         ACT's temporal ensembling at evaluation instead of receding horizon: a
                   chunk every step (exec=1 unless given) and the command averages every
                   chunk covering the step, w_k ∝ exp(-0.01 k) (ACT's m; k = 0 the oldest).
                   ACT's setting is `chunk=100,ensemble`.
  cpu              CPU scale: U-Net (64, 128, 256), batch 128; image: ResNet width 16, one
                   block per stage, batch 32.
  smoke            tiny: 2 U-Net levels, 4 steps, 1 evaluation episode of 24 steps.
  demos=DIR, steps=N, seed=N, episodes=N (evaluation episodes)   overrides.
  (none)           DP's low-dim sizes: U-Net (256, 512, 1024), batch 256.
"""

import ml_collections

from configs import common

# Configs import no simulator code (tests/test_import_layers.py): the env spec and dataset
# names below follow envs/aloha.py's `make_spec` / `dataset_name`, and
# tests/envs/test_aloha_policy.py checks that they agree.
TASKS = ("transfer_cube", "insertion")
DEFAULT_TASK = "transfer_cube"
CAMERA = "top"
PUBLIC_IMAGE_SIZE = (480, 640)  # gym-aloha's and the public datasets' frames
DEFAULT_IMAGE_SIZE = (240, 320)
DEFAULT_DEMOS_DIR = "/tmp/aloha_demos"
_VARIANTS = {"state", "image", "cpu", "smoke", "ensemble", "openpi_client"}
ACT_ENSEMBLE_DECAY = 0.01  # sample/executor.py's ACT_DECAY (configs import no action_gen)


# openpi's ALOHA-sim client (examples/aloha_sim/env.py): the top camera under
# images/cam_high (CHW), the 14 joint positions under state, no prompt; absolute actions in
# gym-aloha's joint convention (our demos' own), so a robot of our own, not the π0
# adapter `aloha_sim` (openpi's camera slots and π runtime joints).
OPENPI_CLIENT_ROBOT = {
    "name": "aloha_sim_client",
    "cameras": f"{CAMERA}=images/cam_high",
    "image_layout": "chw",
    "state": "state",
    "state_dims": "14",
    "action_dim": 14,
    "joints": "none",
    "dataset": (
        f"images/cam_high=observation/image/{CAMERA},state=observation/state,"
        "actions=action,prompt=language_instruction"
    ),
}


def env_spec(task: str, image_size: tuple[int, int] | None) -> str:
    """The env spec of a row: state rows carry the object poses (`+env_state`), image rows
    the top camera and the joints only."""
    if image_size is None:
        return f"aloha_{task}+env_state"
    return f"aloha_{task}@{CAMERA}:{image_size[0]}x{image_size[1]}"


def dataset_name(task: str, image_size: tuple[int, int] | None) -> str:
    """The directory `envs.collect` writes that row's demos to, under its --out."""
    name = f"aloha_sim_{task}_scripted"
    if image_size is None:
        return name + "_env_state"
    if tuple(image_size) == PUBLIC_IMAGE_SIZE:
        return name
    return f"{name}_{CAMERA}{image_size[0]}x{image_size[1]}"


def parse_image_size(value: str) -> tuple[int, int]:
    """'240x320' -> (240, 320)."""
    parts = value.split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"image={value!r}: want HEIGHTxWIDTH, e.g. image=240x320")
    return int(parts[0]), int(parts[1])


def aloha_config(objective: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """A U-Net policy with objective `objective` on the ALOHA task named in `arg`."""
    flags, values = common.parse_arg(arg)
    unknown = flags - _VARIANTS
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; use {sorted(_VARIANTS)}")
    task = values.get("task", DEFAULT_TASK)
    if task not in TASKS:
        raise ValueError(f"task={task!r}: ALOHA tasks are {sorted(TASKS)}")
    image_size = None
    if "image" in values or "image" in flags:
        if "state" in flags:
            raise ValueError("choose one of state, image=HxW")
        image_size = parse_image_size(values["image"]) if "image" in values else DEFAULT_IMAGE_SIZE
    smoke = "smoke" in flags
    config = common.obstacle_config(
        objective,
        ",".join(
            ["runlocal"] * smoke + ["demo"] * ("cpu" in flags) + [f"seed={values.get('seed', 0)}"]
        ),
    )
    spec = env_spec(task, image_size)

    data = config.data
    data.builtin_task = ""  # demos come from envs.collect (a LeRobot dataset)
    demos = values.get("demos", DEFAULT_DEMOS_DIR)
    data.dataset_dir = f"{demos}/{dataset_name(task, image_size)}"
    data.state_norm = "minmax"
    data.action_norm = "minmax"
    data.validate = True
    horizon = int(values.get("chunk", 16))
    if horizon % 4:
        raise ValueError(f"chunk={horizon}: the U-Net needs a multiple of 4")
    config.data.action_horizon = horizon  # linked to the model's and the evaluation's H
    data.shuffle_buffer = 20_000  # 50 demos x 400 steps: the whole dataset
    if image_size is not None:
        height, width = image_size
        crop = [int(round(height * 84 / 96)), int(round(width * 84 / 96))]
        data.cameras = {CAMERA: [height, width]}
        data.image_crop = crop  # random crop in tf.data (training only)
        data.shuffle_buffer = 5_000  # windows of frames are large
        config.model.image_crop = crop  # center crop in the model
        config.model.image_features = 64
        config.model.num_keypoints = 32
        config.model.resnet_width = 64  # ResNet18's stem width
    if "openpi_client" in flags:
        if image_size is None:
            raise ValueError("openpi_client serves an image policy: add image or image=HxW")
        side = max(image_size)
        data.cameras = {CAMERA: [side, side]}  # letterboxed (data/images.resize_with_pad)
        crop = [int(round(side * 84 / 96))] * 2
        data.image_crop = crop
        config.model.image_crop = crop
        for key, value in OPENPI_CLIENT_ROBOT.items():
            config.robot[key] = value

    config.train.num_steps = int(values.get("steps", 20_000))
    config.train.checkpoint_every = 2_000
    config.eval.env = spec
    config.eval.num_episodes = int(values.get("episodes", 100))
    config.eval.num_envs = 10  # simulator worker processes; episodes run in rounds
    config.eval.action_exec_horizon = int(values.get("exec", horizon // 2))
    if "ensemble" in flags:
        config.eval.action_exec_horizon = int(values.get("exec", 1))
        config.eval.temporal_ensemble_decay = ACT_ENSEMBLE_DECAY
    config.eval.max_steps = None  # the env's 400 steps; success ends an episode early
    config.eval.plot = False  # the obstacle plot means nothing here
    config.eval.record = f"{CAMERA}:240x320"  # rollouts.gif of 3 episodes
    config.eval.record_episodes = 3

    if "cpu" in flags:
        config.train.num_steps = int(values.get("steps", 5_000))
        config.train.checkpoint_every = 1_000
        if image_size is not None:
            config.model.resnet_width = 16
            config.model.resnet_blocks = [1, 1, 1, 1]
            data.batch_size = 32
    if smoke:
        data.shuffle_buffer = 256
        config.train.num_steps = int(values.get("steps", 4))
        config.eval.num_episodes = int(values.get("episodes", 1))
        config.eval.num_envs = 1
        config.eval.max_steps = 24
        config.eval.record = ""
        if image_size is not None:
            config.model.image_features = 8
            config.model.num_keypoints = 4
            config.model.resnet_width = 8
            config.model.resnet_blocks = [1, 1]
    return config


def get_config(arg=None):
    return aloha_config("diffusion", arg)
