"""Run small-tensor bookkeeping on one thread.

Per-layer weight statistics (a few hundred channels) cost microseconds on one thread, but
with an intra-op pool every call can wait for a sleeping worker: measured on the 2-core CI
machine, `log` of 256 values took 0.7 ms with 2 threads and 1.6 us with one, which made
equalizing hybrid_medium take a minute instead of a second.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Temporarily set torch's intra-op threads to 1 (restored on exit)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
