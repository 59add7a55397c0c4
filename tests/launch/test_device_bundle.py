"""launch/device_bundle.py's wheel repacking (the download and the install check need the
network and run by hand: BUILD_NOTES.md)."""

import os
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "launch"))
import device_bundle  # noqa: E402


def test_slim_wheel_drops_the_unused_members_and_their_record_lines(tmp_path):
    wheel = tmp_path / "dm_control-1.0.28-py3-none-any.whl"
    members = {
        "dm_control/__init__.py": "",
        "dm_control/mujoco/engine.py": "x = 1\n",
        "dm_control/locomotion/soccer/assets/ball.stl": "mesh" * 100,
        "dm_control/suite/dog_assets/skin.skn": "skin",
        "dm_control/suite/base.py": "y = 2\n",
    }
    record = "".join(f"{name},sha256=x,{len(body)}\n" for name, body in members.items())
    record += "dm_control-1.0.28.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
        z.writestr("dm_control-1.0.28.dist-info/RECORD", record)
    device_bundle.slim_wheel(wheel, device_bundle.DM_CONTROL_UNUSED)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        kept_record = z.read("dm_control-1.0.28.dist-info/RECORD").decode().splitlines()
        assert z.read("dm_control/mujoco/engine.py") == b"x = 1\n"
    assert names == {
        "dm_control/__init__.py",
        "dm_control/mujoco/engine.py",
        "dm_control/suite/base.py",
        "dm_control-1.0.28.dist-info/RECORD",
    }
    assert [line.split(",")[0] for line in kept_record] == [
        "dm_control/__init__.py",
        "dm_control/mujoco/engine.py",
        "dm_control/suite/base.py",
        "dm_control-1.0.28.dist-info/RECORD",
    ]
