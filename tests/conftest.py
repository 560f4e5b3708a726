"""Test-session settings: one torch thread per process.

Small tensors gain nothing from a second thread, and with other processes on the machine
OpenMP's spinning threads can make a step 50x slower.  Users get all cores by default."""

import os

os.environ.setdefault("SKYSUB_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency
    pass
