"""Sensitivity of a layer to the 4-bit mode, for ``ratio < 1``.

Keeping a layer in the backup mode instead of the 4-bit one removes the weight error
``D = Q_backup(W) - Q_4bit(W)`` (``[N, K]``); its effect on the layer's output over inputs ``x`` is
``E||x D^T||^2 = sum_k E[x_k^2] ||D[:, k]||^2``. The parameter budget of the backup mode is best
spent on the layers that remove the most error per parameter, so every score is an error per weight:

===========================  ==================================================================
metric                       score of a layer with ``numel = N K`` weights
===========================  ==================================================================
weight_quantization_error    ``||D||_F^2 / numel`` (no data: every input channel weighs the same)
hessian_input_activation     ``sum_k E[x_k^2] ||D[:, k]||^2 / numel`` (the diagonal of ``X^T X``)
mean_activation_variance     ``mean_k Var[x_k] * ||D||_F^2 / numel``
max_activation_variance      ``max_k Var[x_k] * ||D||_F^2 / numel``
mean_activation_magnitude    ``mean_k E|x_k| * ||D||_F^2 / numel``
===========================  ==================================================================

With backup mode ``none`` the backup weight is the float one (``D = W - Q_4bit(W)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nncompress.functional.weight_quant import WeightQuantSpec, fake_quantize_weight
from nncompress.weight_compression.params import SensitivityMetric


def weight_error_columns(w: Tensor, primary: WeightQuantSpec, backup: WeightQuantSpec | None) -> Tensor:
    """``||D[:, k]||^2`` for every input channel ``k`` (float64, ``[K]``)."""
    w64 = w.detach().to(torch.float64)
    low = fake_quantize_weight(w64, primary)
    high = fake_quantize_weight(w64, backup) if backup is not None else w64
    return ((high - low) ** 2).sum(dim=0)


def layer_score(
    metric: SensitivityMetric,
    column_error: Tensor,
    numel: int,
    mean_sq: Tensor | None = None,
    mean_abs: Tensor | None = None,
    variance: Tensor | None = None,
) -> float:
    """The score of one layer (table in the module doc).

    :param metric: which score.
    :param column_error: ``||D[:, k]||^2`` from :func:`weight_error_columns`.
    :param numel: the layer's weight count.
    :param mean_sq: ``E[x_k^2]`` per input channel (``hessian_input_activation``).
    :param mean_abs: ``E|x_k|`` per input channel (``mean_activation_magnitude``).
    :param variance: ``Var[x_k]`` per input channel (the two variance metrics).
    """
    total = float(column_error.sum()) / numel
    if metric is SensitivityMetric.WEIGHT_QUANTIZATION_ERROR:
        return total
    if metric is SensitivityMetric.HESSIAN_INPUT_ACTIVATION:
        assert mean_sq is not None  # the caller collected it for this metric
        return float((mean_sq.to(torch.float64) * column_error).sum()) / numel
    if metric is SensitivityMetric.MEAN_ACTIVATION_MAGNITUDE:
        assert mean_abs is not None
        return float(mean_abs.to(torch.float64).mean()) * total
    assert variance is not None
    var = variance.to(torch.float64)
    factor = var.max() if metric is SensitivityMetric.MAX_ACTIVATION_VARIANCE else var.mean()
    return float(factor) * total
