"""openpi's ALOHA joint conventions on fixed inputs → tests/data/openpi_aloha_conventions.json.

Runs in openpi's venv (see make_policy_ref.py), outside the repository:
  PYTHONPATH=/tmp/openpi_src/src /tmp/openpi_env/bin/python make_aloha_fixture.py OUT.json
Records, for a few ALOHA states and action chunks, what openpi's aloha_policy (adapt_to_pi)
computes: `_decode_state` (robot → π state), `_encode_actions_inv` (robot → π actions, the
training targets) and `_encode_actions` (π → robot, the served actions), plus
DeltaActions / AbsoluteActions with the (6, -1, 6, -1) mask.
"""

import json
import sys

import numpy as np
from openpi import transforms
from openpi.policies import aloha_policy

rng = np.random.default_rng(0)
arm = lambda n: np.concatenate([rng.uniform(-1.5, 1.5, (n, 6)), rng.uniform(0, 1, (n, 1))], 1)  # noqa: E731
states = np.concatenate([arm(3), arm(3)], 1)  # [3, 14]
actions = np.stack([np.concatenate([arm(4), arm(4)], 1) for _ in range(3)])  # [3, 4, 14]
mask = transforms.make_bool_mask(6, -1, 6, -1)
out = {"states": states.tolist(), "actions": actions.tolist(), "delta_mask": list(mask)}
out["decode_state"] = [aloha_policy._decode_state(s.copy(), adapt_to_pi=True).tolist() for s in states]
out["encode_actions_inv"] = [
    aloha_policy._encode_actions_inv(a.copy(), adapt_to_pi=True).tolist() for a in actions
]
out["encode_actions"] = [aloha_policy._encode_actions(a.copy(), adapt_to_pi=True).tolist() for a in actions]
delta = [
    transforms.DeltaActions(mask)({"state": s.copy(), "actions": a.copy()})["actions"].tolist()
    for s, a in zip(states, actions, strict=True)
]
out["delta_actions"] = delta
out["absolute_actions"] = [
    transforms.AbsoluteActions(mask)({"state": s.copy(), "actions": np.asarray(d)})["actions"].tolist()
    for s, d in zip(states, delta, strict=True)
]
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
