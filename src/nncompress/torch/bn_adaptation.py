"""Batch-norm adaptation: re-estimate BatchNorm running statistics after compression.

Masking (or quantizing) weights shifts the statistics of the activations that BatchNorm layers
normalise; running a few hundred training samples through the model in train mode, with every
BatchNorm layer's running statistics reset and averaged cumulatively (``momentum=None``), gives
statistics that fit the compressed weights. A batch that makes any statistic non-finite (a NaN
pixel in the data) stops the adaptation with an :class:`~nncompress.errors.InitDataError` naming
the first BatchNorm op it reached and the batch, and every statistic is put back. Under torch.distributed the statistics are averaged
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
from nncompress.graph.scopes import module_scopes
from nncompress.torch.bn_modes import snapshot_statistics
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
    :raises InitDataError: without data, with empty data, if a batch does not fit the model, or
        if a batch makes a BatchNorm statistic NaN or infinite (the message names the first such
        BatchNorm op and the batch). The model's statistics and modes are left as they were then.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns or num_samples <= 0:
        return 0
    if init_data is None:
        raise InitDataError(
            "batchnorm_adaptation needs data: pass init_data to create_compressed_model "
            "(or register_default_init_args), or remove initializer.batchnorm_adaptation"
        )
    restore = snapshot_statistics(bns)
    momenta = [m.momentum for m in bns]
    modes = {m: m.training for m in model.modules()}
    guard = _FiniteStatisticsGuard(model, bns)
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all adaptation batches
            m.train()
        seen = forward_batches(model, init_data, num_samples, "BatchNorm adaptation", progress)
    except BaseException:
        restore()
        raise
    finally:
        guard.remove()
        for module, training in modes.items():
            module.training = training
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    _average_across_ranks(bns)
    return seen


class _FiniteStatisticsGuard:
    """Forward hooks that raise :class:`InitDataError` as soon as a BatchNorm's running statistics
    stop being finite, naming the op (``<scope>/batch_norm_<call>``) and the batch."""

    def __init__(self, model: nn.Module, bns: list[_BatchNorm]) -> None:
        self.scopes = module_scopes(model)
        self.batch = -1
        self.calls: dict[nn.Module, int] = {}
        self.handles = [model.register_forward_pre_hook(self._next_batch)]
        self.handles += [m.register_forward_hook(self._check) for m in bns]

    def _next_batch(self, model: nn.Module, args: Any) -> None:
        self.batch += 1
        self.calls.clear()

    def _check(self, module: nn.Module, args: Any, output: Any) -> None:
        call = self.calls.get(module, 0)
        self.calls[module] = call + 1
        mean, var = module.running_mean, module.running_var
        assert isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)  # track_running_stats
        if bool(torch.isfinite(mean).all()) and bool(torch.isfinite(var).all()):
            return
        scope, name = self.scopes.get(module, (type(module).__name__, "?"))
        raise InitDataError(
            f"BatchNorm adaptation: init_data batch {self.batch} made the running statistics of BatchNorm op "
            f"{scope}/batch_norm_{call} (module {name!r}) NaN or infinite; the data (or the activations it "
            "gives) must be finite. No statistic was changed: remove the non-finite samples from init_data"
        )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


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
