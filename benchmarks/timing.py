"""Timing helpers shared by the benchmark scripts: a training step and interleaved medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

STEPS = 30
ROUNDS = 3
WARMUP = 5

Batch = tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(
    model: nn.Module, batch: Batch, loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], ctrl: Any = None,
    lr: float = 1e-3,
) -> Callable[[], None]:
    """One SGD training step (forward, loss, backward, step), with the compression calls when ``ctrl``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    args, kwargs, target = batch

    def step() -> None:
        if ctrl is not None:
            ctrl.scheduler.step()
        loss = loss_fn(model(*args, **kwargs), target)
        if ctrl is not None:
            loss = loss + ctrl.loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved_steps(steps: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Median step seconds of each of ``steps``, run in turn step by step (``STEPS`` each), over
    ``ROUNDS`` rounds; the round with the median ratio of the last entry over the first is kept,
    which is robust to a burst of load from other processes."""
    for _ in range(WARMUP):
        for fn in steps.values():
            fn()
    rounds = []
    for _ in range(ROUNDS):
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(STEPS):
            for k, fn in steps.items():
                times[k].append(median_time(fn, 1))
        rounds.append({k: statistics.median(v) for k, v in times.items()})
    first, last = next(iter(steps)), list(steps)[-1]
    return sorted(rounds, key=lambda r: r[last] / r[first])[len(rounds) // 2]
