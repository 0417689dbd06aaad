"""Running a model with its BatchNorm layers normalising by batch statistics, nothing else changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block the model is in eval mode except its BatchNorm layers, which normalise
    by the statistics of each batch, as in training; their running statistics are restored at the
    end (also on error), and so is every module's mode.

    A call where a BatchNorm sees one value per channel (a batch of one after global pooling),
    for which batch statistics do not exist, uses the running statistics instead.

    Quantization-aware training quantizes the activations of the training-mode forward, so the
    activation ranges are initialised on those. Collected in eval mode instead, the running
    statistics of a freshly initialised network (mean 0, variance 1) let activations shrink
    layer after layer: ranges of 1e-7 at the 15th block of a MobileNetV2, against O(1) values
    once training starts, and SGD diverged at its second step. Dropout stays off (eval).

    :param model: the model.
    """
    modes = {m: m.training for m in model.modules()}
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    restore = snapshot_statistics(bns)
    model.eval()
    hooks = []
    for m in bns:
        m.train()
        hooks.append(m.register_forward_pre_hook(_running_statistics_for_one_value))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        restore()
        for module, training in modes.items():
            module.training = training


def _running_statistics_for_one_value(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: batch statistics where the input has more than one value per channel."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() >= 2:
        module.training = x.numel() // max(int(x.shape[1]), 1) > 1


def snapshot_statistics(bns: list[_BatchNorm]) -> Callable[[], None]:
    """Copy the running statistics and momentum of BatchNorm layers.

    :param bns: the layers.
    :return: a function that puts the copies back.
    """
    saved = [(m, m.momentum, [(t, t.detach().clone()) for t in (m.running_mean, m.running_var,
                                                               m.num_batches_tracked) if t is not None])
             for m in bns]

    def restore() -> None:
        with torch.no_grad():
            for m, momentum, tensors in saved:
                m.momentum = momentum
                for t, copy in tensors:
                    t.copy_(copy)

    return restore
