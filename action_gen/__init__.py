"""action_gen: robot actions as continuous trajectories (diffusion, flow matching) in JAX.

Importing the package quiets TensorFlow's C++ start-up messages for every entry point
(set before any module loads TensorFlow; a value already in the environment wins):
TF_CPP_MIN_LOG_LEVEL=2 keeps warnings and errors, and TF_ENABLE_ONEDNN_OPTS=0 drops the
oneDNN notice TensorFlow 2.21 prints at each load (TensorFlow only runs the input stream
here — decoding, windows, crops — none of the matmul / conv kernels oneDNN speeds up).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
