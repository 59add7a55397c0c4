#!/bin/bash
# The ALOHA benchmark on a lent GPU machine (no TensorFlow, no simulator, no network):
# unpacks the GL loaders and installs the wheels that `python launch/device_bundle.py`
# packed into .device/ (carry it), then runs launch/aloha_benchmark.py with the in-memory
# loader (data/memory.py) and the full model sizes. Arguments go to the launcher, e.g.
#
#   bash launch/device_aloha.sh --workdir=/tmp/aloha --rows=dp_transfer_cube_image \
#       --workers=16 && cp -r /tmp/aloha/*/results_*.json /tmp/aloha/results.md $OUT/
#
# (device tool: run(command=..., carry=[".device"])). Demos are recorded there (16 workers).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .device/wheels ]; then
  echo "error: .device/wheels is missing: run 'python launch/device_bundle.py' here first" >&2
  exit 2
fi
for deb in .device/gl/*.deb; do dpkg -x "$deb" /; done
ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/device-site .device/wheels/*.whl
export PYTHONPATH="/tmp/device-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL=egl
export PYOPENGL_PLATFORM=egl
python3 launch/aloha_benchmark.py --loader=memory --size=gpu "$@"
