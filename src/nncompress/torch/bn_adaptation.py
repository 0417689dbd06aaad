"""Batch-norm adaptation: re-estimate BatchNorm running statistics after compression.

Masking (or quantizing) weights shifts the statistics of the activations that BatchNorm layers
normalise; running a few hundred training samples through the model in train mode, with every
BatchNorm layer's running statistics reset and averaged cumulatively (``momentum=None``), gives
statistics that fit the compressed weights. Under torch.distributed the statistics are averaged
over all ranks, so every rank ends with the same ones. Nothing else changes: no gradients, other modules
(dropout) in eval mode. Config (NNCF 2.x)::

    "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 300}}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nncompress.errors import InitDataError
from nncompress.torch.calibration import forward_batches

DEFAULT_BN_ADAPTATION_SAMPLES = 2000
"""NNCF 2.x's default ``num_bn_adaptation_samples``."""


def adapt_batchnorm(model: nn.Module, init_data: Iterable[Any] | None, num_samples: int, progress: bool = True) -> int:
    """Re-estimate the running statistics of every BatchNorm layer on ``num_samples`` samples.

    :param model: the (compressed) model; its parameters are not changed.
    :param init_data: batches: ``(inputs, target)`` pairs, tensors or dicts of keyword inputs.
    :param num_samples: how many samples to run (whole batches; at least one batch).
    :param progress: show a progress bar.
    :return: the number of samples used.
    :raises InitDataError: without data, with empty data, or if a batch does not fit the model.
        The model's statistics and modes are left as they were then.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns or num_samples <= 0:
        return 0
    if init_data is None:
        raise InitDataError(
            "batchnorm_adaptation needs data: pass init_data to create_compressed_model "
            "(or register_default_init_args), or remove initializer.batchnorm_adaptation"
        )
    saved = {id(m): (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())  # type: ignore[union-attr]
             for m in bns}
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all adaptation batches
            m.train()
        seen = forward_batches(model, init_data, num_samples, "BatchNorm adaptation", progress)
    except BaseException:
        for m in bns:
            momentum, mean, var, count = saved[id(m)]
            m.running_mean.copy_(mean)  # type: ignore[union-attr]
            m.running_var.copy_(var)  # type: ignore[union-attr]
            m.num_batches_tracked.copy_(count)  # type: ignore[union-attr]
            m.momentum = momentum
        raise
    finally:
        for module, training in modes.items():
            module.training = training
    for m in bns:
        m.momentum = saved[id(m)][0]
    _average_across_ranks(bns)
    return seen


def _average_across_ranks(bns: list[_BatchNorm]) -> None:
    """Under torch.distributed, every rank ends with the mean of all ranks' statistics."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    for m in bns:
        for stat in (m.running_mean, m.running_var):
            assert stat is not None  # track_running_stats was checked
            torch.distributed.all_reduce(stat, op=torch.distributed.ReduceOp.SUM)
            stat.div_(world)
