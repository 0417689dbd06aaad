"""``compress_weights``: weight-only INT8 / INT4 / NF4 compression of a model's linear layers.

The model is compressed in place, as NNCF's ``compress_weights`` does (an LLM is often too large to
copy): every planned ``nn.Linear`` / ``nn.Embedding`` is replaced by a
:class:`~nncompress.weight_compression.modules.CompressedLinear` /
:class:`~nncompress.weight_compression.modules.CompressedEmbedding` holding packed codes. All the
work that can fail (argument checks, statistics, AWQ / scale estimation / GPTQ) runs before the
first module is replaced, so on an error the model is unchanged.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import QuantizedWeight, quantize_weight
from nncompress.ptq.dataset import Dataset, take_samples
from nncompress.ptq.params import IgnoredScope
from nncompress.torch.inputs import ModelInputs
from nncompress.weight_compression.checkpoint import replace_module
from nncompress.weight_compression.data_aware import collect_activation_stats, compress_data_aware
from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear
from nncompress.weight_compression.params import (
    AdvancedCompressionParameters,
    BackupMode,
    CompressWeightsMode,
    GroupSizeFallbackMode,
    SensitivityMetric,
    to_enum,
)
from nncompress.weight_compression.plan import (
    LayerEntry,
    PlanOptions,
    apply_ratio,
    initial_plan,
    iter_compressed,
    weighted_layers,
)
from nncompress.weight_compression.sensitivity import layer_score, weight_error_columns
from nncompress.weight_compression.summary import WeightCompressionSummary

Quantized = dict[str, tuple[QuantizedWeight, torch.Tensor | None]]


def compress_weights(
    model: nn.Module,
    mode: CompressWeightsMode | str = CompressWeightsMode.INT8_ASYM,
    ratio: float | None = None,
    group_size: int | None = None,
    ignored_scope: IgnoredScope | None = None,
    all_layers: bool | None = None,
    dataset: Dataset | None = None,
    sensitivity_metric: SensitivityMetric | str | None = None,
    subset_size: int = 128,
    awq: bool | None = None,
    scale_estimation: bool | None = None,
    gptq: bool | None = None,
    lora_correction: bool | None = None,
    backup_mode: BackupMode | str | None = None,
    advanced_parameters: AdvancedCompressionParameters | None = None,
) -> nn.Module:
    """Compress the weights of ``model``'s linear and embedding layers, in place.

    Example::

        model = AutoModelForCausalLM.from_pretrained(...)
        nnc.compress_weights(model, mode=nnc.CompressWeightsMode.INT4_SYM, group_size=64, ratio=0.8)
        nnc.compress_weights(model, mode="int4_asym", group_size=64, dataset=nnc.Dataset(samples),
                             awq=True, scale_estimation=True)

    :param model: the float model (changed in place and returned).
    :param mode: the format of the compressed layers (:class:`CompressWeightsMode` or its value).
    :param ratio: share of the 4-bit candidates' weights in the 4-bit mode; the rest (the most
        sensitive layers) take ``backup_mode``. Default 1; only with a 4-bit mode.
    :param group_size: input columns per scale for 4-bit modes (default 128; ``-1`` per channel).
    :param ignored_scope: layers to leave in float (module names, patterns, types).
    :param all_layers: also put the output layer in the 4-bit mode (default: backup mode).
    :param dataset: calibration data, needed by AWQ, scale estimation, GPTQ and the data-aware
        sensitivity metrics.
    :param sensitivity_metric: how ``ratio`` ranks layers; default ``weight_quantization_error``
        without a dataset, ``hessian_input_activation`` with one.
    :param subset_size: calibration samples used (at most).
    :param awq: activation-aware per-channel scaling before rounding (needs ``dataset``).
    :param scale_estimation: refit each group's scale to the activation-weighted error.
    :param gptq: GPTQ error feedback, block by block.
    :param lora_correction: not supported (raises).
    :param backup_mode: format of the layers kept out of the 4-bit mode (default ``int8_asym``).
    :param advanced_parameters: algorithm settings, group-size fallback, progress bars.
    :return: ``model``.
    :raises InvalidArgumentError: for a bad argument, naming it and what is allowed.
    """
    adv = advanced_parameters if advanced_parameters is not None else AdvancedCompressionParameters()
    opts, metric = _check_arguments(model, mode, ratio, group_size, ignored_scope, all_layers, dataset,
                                    sensitivity_metric, subset_size, awq, scale_estimation, gptq,
                                    lora_correction, backup_mode, adv)
    start = time.perf_counter()
    entries = weighted_layers(model)
    if not entries:
        raise InvalidArgumentError(f"{type(model).__name__} has no nn.Linear or nn.Embedding layer to compress")
    candidates = initial_plan(model, entries, opts)
    samples = take_samples(dataset, subset_size, "dataset")[0] if dataset is not None else []
    if opts.ratio < 1.0 and candidates:
        scores = _scores(model, candidates, opts, metric, samples, adv.progress)
        apply_ratio(candidates, opts.ratio, scores, opts.backup())
    data_aware = bool(awq or scale_estimation or gptq)
    quantized = _quantize(model, entries, samples if data_aware else [], bool(awq), bool(scale_estimation),
                          bool(gptq), adv)
    _install(model, entries, quantized)
    summary = WeightCompressionSummary.from_entries(entries, metric if opts.ratio < 1.0 else None,
                                                    time.perf_counter() - start)
    model.nncompress_weight_summary = summary  # type: ignore[assignment]
    if adv.progress:
        print(summary, file=sys.stderr)
    return model


def _check_arguments(model: Any, mode: Any, ratio: Any, group_size: Any, ignored_scope: Any, all_layers: Any,
                     dataset: Any, sensitivity_metric: Any, subset_size: Any, awq: Any, scale_estimation: Any,
                     gptq: Any, lora_correction: Any, backup_mode: Any,
                     adv: AdvancedCompressionParameters) -> tuple[PlanOptions, SensitivityMetric]:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if torch.is_inference_mode_enabled():
        raise InvalidArgumentError("compress_weights cannot run under torch.inference_mode(); call it outside")
    mode_e = to_enum(CompressWeightsMode, mode, "mode")
    assert isinstance(mode_e, CompressWeightsMode)
    if lora_correction:
        raise InvalidArgumentError("lora_correction is not supported by nncompress; pass lora_correction=None or False")
    if not mode_e.is_4bit:
        if ratio not in (None, 1, 1.0) or group_size not in (None, -1):
            raise InvalidArgumentError(
                f"mode {mode_e.value} is per-channel INT8: ratio must be None or 1 and group_size None or -1, "
                f"got ratio={ratio!r}, group_size={group_size!r}"
            )
        for name, flag in (("awq", awq), ("scale_estimation", scale_estimation), ("gptq", gptq)):
            if flag:
                raise InvalidArgumentError(f"{name} applies to 4-bit modes only, not {mode_e.value}")
    ratio_v = 1.0 if ratio is None else ratio
    if isinstance(ratio_v, bool) or not isinstance(ratio_v, (int, float)) or not 0.0 <= ratio_v <= 1.0:
        raise InvalidArgumentError(f"ratio must be a number in [0, 1], got {ratio!r}")
    gs = 128 if group_size is None else group_size
    if isinstance(gs, bool) or not isinstance(gs, int) or (gs != -1 and gs < 2):
        raise InvalidArgumentError(f"group_size must be -1 (per channel) or an int >= 2, got {group_size!r}")
    if ignored_scope is not None and not isinstance(ignored_scope, IgnoredScope):
        raise InvalidArgumentError(f"ignored_scope must be an nncompress.IgnoredScope, got {type(ignored_scope).__name__}")
    if dataset is not None and not isinstance(dataset, Dataset):
        raise InvalidArgumentError(f"dataset must be an nncompress.Dataset, got {type(dataset).__name__}")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 1:
        raise InvalidArgumentError(f"subset_size must be a positive int, got {subset_size!r}")
    needs = [n for n, f in (("awq", awq), ("scale_estimation", scale_estimation), ("gptq", gptq)) if f]
    if needs and dataset is None:
        raise InvalidArgumentError(f"{', '.join(needs)} need calibration data: pass dataset=nnc.Dataset(...)")
    if mode_e is CompressWeightsMode.NF4 and (awq or scale_estimation or gptq):
        raise InvalidArgumentError("awq, scale_estimation and gptq support int4_sym / int4_asym, not nf4")
    default_metric = SensitivityMetric.HESSIAN_INPUT_ACTIVATION if dataset is not None else \
        SensitivityMetric.WEIGHT_QUANTIZATION_ERROR
    metric = to_enum(SensitivityMetric, sensitivity_metric or default_metric, "sensitivity_metric")
    assert isinstance(metric, SensitivityMetric)
    if metric is not SensitivityMetric.WEIGHT_QUANTIZATION_ERROR and dataset is None and ratio_v < 1.0:
        raise InvalidArgumentError(f"sensitivity_metric {metric.value} needs calibration data: pass dataset=")
    backup = to_enum(BackupMode, backup_mode or BackupMode.INT8_ASYM, "backup_mode")
    assert isinstance(backup, BackupMode)
    fallback = adv.group_size_fallback_mode
    assert isinstance(fallback, GroupSizeFallbackMode)
    opts = PlanOptions(mode_e, gs, float(ratio_v), bool(all_layers), backup, fallback, ignored_scope)
    return opts, metric


def _scores(model: nn.Module, candidates: list[LayerEntry], opts: PlanOptions, metric: SensitivityMetric,
            samples: Sequence[ModelInputs], progress: bool) -> dict[str, float]:
    stats: dict[str, Any] = {}
    if metric is not SensitivityMetric.WEIGHT_QUANTIZATION_ERROR:
        stats = collect_activation_stats(model, list(samples), [e.name for e in candidates], progress)
    scores: dict[str, float] = {}
    primary, backup = opts.primary(), opts.backup()
    for e in tqdm(candidates, desc="Sensitivity", unit="layer", disable=not progress, leave=False):
        column_error = weight_error_columns(e.weight, primary, backup)
        s = stats.get(e.name)
        scores[e.name] = layer_score(metric, column_error, e.numel,
                                     mean_sq=getattr(s, "mean_sq", None), mean_abs=getattr(s, "mean_abs", None),
                                     variance=getattr(s, "variance", None))
    return scores


def _quantize(model: nn.Module, entries: list[LayerEntry], samples: list[ModelInputs], awq: bool,
              scale_estimation: bool, gptq: bool, adv: AdvancedCompressionParameters) -> Quantized:
    """Quantized weights of every planned layer: data-aware for the 4-bit linears, RTN otherwise."""
    todo = list(iter_compressed(entries))
    result: Quantized = {}
    if samples:
        plan = {e.name: e.spec for e in todo if e.kind == "linear" and e.spec is not None and e.spec.bits == 4}
        result.update(compress_data_aware(
            model, samples, plan,
            awq=adv.awq_params if awq else None,
            scale_estimation=adv.scale_estimation_params if scale_estimation else None,
            gptq=adv.gptq_params if gptq else None,
            progress=adv.progress,
        ))
    rest = [e for e in todo if e.name not in result]
    for e in tqdm(rest, desc="Compressing", unit="layer", disable=not adv.progress, leave=False):
        assert e.spec is not None
        with torch.no_grad():
            result[e.name] = (quantize_weight(e.weight.detach().float(), e.spec), None)
    return result


def _install(model: nn.Module, entries: list[LayerEntry], quantized: Quantized) -> None:
    """Replace the planned modules by compressed ones (tied layers share one compressed tensor)."""
    made: dict[str, nn.Module] = {}
    for e in entries:
        if e.name in quantized:
            qw, multiplier = quantized[e.name]
            made[e.name] = _compressed(e, qw, multiplier)
    for e in entries:
        if e.spec is None or e.name in made:
            continue
        holder = next(made[t] for t in e.tied if t in made)
        made[e.name] = _tied(e, holder)
    for name, module in made.items():
        replace_module(model, name, module)


def _compressed(e: LayerEntry, qw: QuantizedWeight, multiplier: torch.Tensor | None) -> nn.Module:
    if e.kind == "embedding":
        padding_idx = getattr(e.module, "padding_idx", None)
        return CompressedEmbedding.from_quantized(qw, padding_idx=padding_idx)
    return CompressedLinear.from_quantized(qw, e.bias, multiplier)


def _tied(e: LayerEntry, holder: nn.Module) -> nn.Module:
    """A module for ``e`` reading the compressed tensor of the tied ``holder``."""
    if e.kind == "linear" and isinstance(holder, CompressedEmbedding):
        return CompressedLinear.tied_to(holder, e.bias)
    raise InvalidArgumentError(
        f"layer {e.name!r} shares its weight with a layer of another kind; pass it in ignored_scope"
    )

