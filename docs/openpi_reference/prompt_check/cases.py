import numpy as np
rng = np.random.default_rng(0)
words = ["pick", "up", "the", "cup", "fork", "open_drawer", "Close", "the_door", "\n", "  ", "go", "around"]
cases = []
for i in range(200):
    n = rng.integers(0, 12)
    text = " ".join(rng.choice(words, n)) + rng.choice(["", " ", "\n", "_"])
    S = int(rng.integers(1, 15))
    state = (rng.normal(size=S) * rng.choice([0.3, 1.0, 2.0])).astype(np.float32)
    if i % 7 == 0:
        state[0] = rng.choice([-1.0, 1.0, -1 + 2 / 256, 0.0])
    cases.append((text, state))
