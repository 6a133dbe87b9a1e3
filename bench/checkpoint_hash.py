"""What checking a large checkpoint costs: the train state of 1,024 `mnist_mlp` models (1.3 GB)
hashed as one sha256 (checkpoints before the checksum of blocks) and as sha256s of 64 MiB blocks
on every core (`checkpoint.state_blocks_sha256`), in one process, 5 times each.

`python bench/checkpoint_hash.py`
"""

import dataclasses
import time
from pathlib import Path

import jax

from digitsjax.core.config import load_pipeline
from digitsjax.core.program import init_state, program_of
from digitsjax.run import checkpoint

p = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "mnist_mlp.toml")
p = dataclasses.replace(p, train=dataclasses.replace(p.train, num_models=1024))
host = jax.device_get(init_state(program_of(p)))
old, new = [], []
for _ in range(5):
    t = time.perf_counter()
    checkpoint.state_sha256(host)
    old.append(time.perf_counter() - t)
    t = time.perf_counter()
    checkpoint.state_blocks_sha256(host)
    new.append(time.perf_counter() - t)
print(f"1,024 mnist_mlp models' state: one sha256 {min(old):.2f} s (median {sorted(old)[2]:.2f}), "
      f"blocks on all cores {min(new):.2f} s (median {sorted(new)[2]:.2f}), "
      f"ratio {min(new) / min(old):.2f}")
