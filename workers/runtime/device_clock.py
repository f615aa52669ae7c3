"""The clock every local model call is billed by: device-seconds, not the seconds a busy machine took.

On a CPU with one torch thread (the reference set-up, ``PARSIMONY_TORCH_THREADS=1``) a model
computes on the calling thread, so that thread's CPU time is exactly the CPU-seconds it used: time
the CPU gave to other threads or processes meanwhile (another worker, a web request, a noisy
neighbour) is theirs, not this call's. Billing wall time instead made the same prompt cost ~25%
more in one minute than the next on a shared 2-core machine, and a cost model calibrated in a
quiet moment then mispredicted the rest (docs/costs.md, "The clock"). Otherwise (a GPU, or torch's
own thread pool doing the work, whose threads this thread's clock does not see) it is the wall
time the call held the model, which on a GPU is what the device was busy for.

Calibration, the decode loop's budget check and billing all read the same clock, so a
reservation's predicted seconds and the seconds billed are the same kind of seconds. Wall-time
limits (``PARSIMONY_MODEL_WALL_TIME_S``) stay on ``time.perf_counter``: they bound how long a
user waits, not what the call costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def device_clock(device: str) -> Callable[[], float]:
    """The clock that measures a model call's device-seconds on ``device`` (see the module doc)."""
    if not str(device).startswith("cuda"):
        import torch

        if torch.get_num_threads() == 1:
            return time.thread_time
    return time.perf_counter


__all__ = ["device_clock"]
