"""Packs what a lent GPU machine lacks for the ALOHA benchmark into `.device/` (carried).

The lent machines (H100 / H200) have JAX, flax, optax, orbax, pyarrow, PIL and the rest
of a CUDA image, but no TensorFlow, no MuJoCo / dm-control / gym-aloha, no PyAV and no
ml_collections, and nothing can be downloaded there; a call carries at most 64 MiB
(working tree included). This script, run here, writes:

  .device/wheels/  cp312 manylinux x86-64 wheels of the simulator stack and PyAV, at the
                   versions installed here (the ones every ALOHA result was measured
                   with). dm-control's wheel (56 MB) is repacked without the parts the
                   ALOHA tasks never load (locomotion's soccer and walker meshes, the dog
                   domain's assets, its test models): 2.5 MB.
  .device/gl/      the EGL / OpenGL loader libraries (Debian packages) MuJoCo's headless
                   renderer needs there (`MUJOCO_GL=egl`).

Training there reads the LeRobot demos with `data.loader=memory` (data/memory.py), which
needs no TensorFlow. Then, with the device tool:

  run(command="bash launch/device_aloha.sh --workdir=/tmp/aloha --rows=dp_transfer_cube_image",
      carry=[".device"])

`--check` builds the same bundle for the Python here, installs it into a scratch
directory first on the path, and records one scripted ALOHA demo with it.
"""

import argparse
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / ".device"
# Distributions the device lacks (KINDS.md's package list), pinned to the versions here.
DISTRIBUTIONS = (
    "mujoco",
    "dm-control",
    "gym-aloha",
    "dm-env",
    "dm-tree",
    "labmaze",  # dm-control imports it at module level in a few places
    "glfw",
    "pyopengl",
    "gymnasium",
    "farama-notifications",
    "av",
    "ml-collections",
)
# dm-control paths the ALOHA tasks (dm_control.mujoco, rl.control, suite.base) never read.
DM_CONTROL_UNUSED = (
    "dm_control/locomotion/",
    "dm_control/suite/dog_assets/",
    "dm_control/mujoco/testing/",
    "dm_control/blender/",
    "dm_control/mjcf/test_assets/",
    "dm_control/suite/all_domains.png",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
GL_PACKAGES = ("libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2")
CARRY_LIMIT = 64 * 2**20


def download_wheels(dest: pathlib.Path, python_version: str = "3.12") -> list[pathlib.Path]:
    """Wheels of DISTRIBUTIONS at this environment's versions, for CPython `python_version`
    on x86-64 Linux (no dependencies: each is named)."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in DISTRIBUTIONS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp",
           "-d", str(dest)]  # fmt: skip
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True)
    return sorted(dest.glob("*.whl"))


def bundle_wheels(dest: pathlib.Path, python_version: str = "3.12") -> list[pathlib.Path]:
    """`download_wheels`, with dm-control's wheel repacked without DM_CONTROL_UNUSED."""
    wheels = download_wheels(dest, python_version)
    for wheel in wheels:
        if wheel.name.startswith("dm_control-"):
            slim_wheel(wheel, DM_CONTROL_UNUSED)
    return wheels


def slim_wheel(path: pathlib.Path, unused: tuple[str, ...]) -> pathlib.Path:
    """Rewrites the wheel at `path` without the members under `unused` (and their RECORD
    lines, so the installed RECORD lists exactly what is there)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept = [i for i in src.infolist() if not i.filename.startswith(unused)]
        lines = [
            line
            for line in src.read(record).decode().splitlines()
            if line and not line.split(",")[0].startswith(unused)
        ]
        for info in kept:
            if info.filename != record:
                dst.writestr(info, src.read(info.filename))
        dst.writestr(record, "\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def download_gl(dest: pathlib.Path) -> list[pathlib.Path]:
    """The amd64 Debian packages of GL_PACKAGES (apt-get download; device README)."""
    dest.mkdir(parents=True, exist_ok=True)
    lists = pathlib.Path(tempfile.mkdtemp(prefix="apt-amd64-"))
    (lists / "partial").mkdir()
    opts = [
        "-oAPT::Architecture=amd64",
        "-oAPT::Architectures=amd64",
        f"-oDir::State::Lists={lists}",
    ]
    subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
    subprocess.run(["apt-get", *opts, "-qq", "download", *GL_PACKAGES], check=True, cwd=dest)
    shutil.rmtree(lists, ignore_errors=True)
    return sorted(dest.glob("*.deb"))


def tree_bytes() -> int:
    """Bytes of the files a device call sends besides `.device` (tracked + untracked, not
    ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout  # fmt: skip
    files = [REPO / p for p in out.decode().split("\0") if p]
    return sum(f.stat().st_size for f in files if f.is_file())


def check() -> None:
    """The same bundle for this interpreter's Python, installed into a scratch directory
    first on the path: records one scripted ALOHA demo with it (the slim dm-control's
    imports, the end-effector and joint simulations, the rendered top camera, PyAV's
    encoder), as `launch/device_aloha.sh`'s first step does on the device."""
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="device-check-"))
    try:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        wheels = bundle_wheels(scratch / "wheels", python_version=version)
        site = scratch / "site"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
             "--no-compile", "--target", str(site), *map(str, wheels)],
            check=True,
        )  # fmt: skip
        code = (
            "import runpy, sys\n"
            "sys.argv = ['collect', '--env=aloha_transfer_cube', '--episodes=1',\n"
            f"            '--image=top:48x64', '--out={scratch / 'demos'}']\n"
            "try:\n"
            "    runpy.run_module('action_gen.envs.collect', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "import dm_control\n"
            f"assert dm_control.__file__.startswith({str(site)!r}), dm_control.__file__\n"
            "print('the slim bundle records an ALOHA demo:', dm_control.__file__)\n"
        )
        env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", MUJOCO_GL="egl")
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT), help="Bundle directory (default .device).")
    parser.add_argument("--no_gl", action="store_true", help="Skip the GL packages.")
    parser.add_argument("--check", action="store_true", help="Run one episode with the wheels.")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    wheels = bundle_wheels(out / "wheels")
    debs = [] if args.no_gl else download_gl(out / "gl")
    carried = sum(p.stat().st_size for p in wheels + debs)
    total = carried + tree_bytes()
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in wheels)).hexdigest()[:12]
    print(f"{out}: {len(wheels)} wheels, {len(debs)} packages, {carried / 2**20:.1f} MiB; "
          f"with the working tree {total / 2**20:.1f} MiB of the {CARRY_LIMIT // 2**20} MiB "
          f"a call carries (wheels sha256 {digest})")  # fmt: skip
    if total > CARRY_LIMIT:
        print("error: over the carry limit", file=sys.stderr)
        return 1
    if args.check:
        check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
