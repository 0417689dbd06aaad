"""``quantize()``: INT8 post-training quantization from a few hundred unlabeled samples.

The pipeline, on a copy of the model (the user's model is untouched unless ``inplace``):

1. **Capture** on the first calibration item; a graph with LayerNorm/RMSNorm and attention is
   treated as a transformer unless told otherwise.
2. **Placement**, the same as quantization-aware training (``algorithms/quantization``), with
   transformer rules: residual adds and attention matmuls stay float, and the input of each
   linear layer gets its own quantizer behind a SmoothQuant :class:`ChannelScale`.
3. **One statistics pass** over the calibration items under ``torch.inference_mode()``: the
   activation quantizers' ranges, the SmoothQuant channel extremes and the layers' mean inputs
   for bias correction, all at once with the float model.
4. **SmoothQuant** scales, weight ranges (per output channel, after smoothing), the smoothed
   inputs' ranges computed from the channel extremes (a second pass only for the percentile
   estimators there), then **fast bias correction** from the mean inputs.

The result holds the same learnable fake quantizers as QAT: export it with
:func:`~nncompress.export_model`, strip it with :func:`~nncompress.strip`, or train it further
(its controller: :func:`~nncompress.compression_controller`).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from nncompress.algorithms.context import CompressionContext
from nncompress.algorithms.quantization.algo import QuantizationBuilder, QuantizationController
from nncompress.algorithms.quantization.params import QuantizationParams
from nncompress.algorithms.quantization.placement import PlacementRules, place_quantizers
from nncompress.algorithms.quantization.quantizers import FakeQuantizer
from nncompress.config import CompressionConfig
from nncompress.errors import (
    CaptureError,
    InitDataError,
    InvalidArgumentError,
)
from nncompress.functional.smoothing import scaled_tensor_range
from nncompress.graph.capture import CapturedGraph
from nncompress.graph.layout import InsertionCommand, Priority, TargetPoint, TargetType, TransformationLayout
from nncompress.handles import register_controller
from nncompress.torch.calibration import batch_size, call_model, refuse_inference_mode
from nncompress.torch.inputs import ModelInputs, dtype_mismatch
from nncompress.torch.insertion import apply_layout, remove_runtime
from nncompress.torch.runtime import get_runtime

from .bias_correction import BiasTarget, apply_shift, bias_targets, layer_weight
from .dataset import Dataset, take_samples
from .params import AdvancedQuantizationParameters, IgnoredScope, ModelType, QuantizationPreset, TargetDevice
from .smooth_quant import ChannelScale, SmoothGroup, smooth, smoothable_linears

SMOOTH_GROUP = "smooth_quant"
_NORMS = frozenset({"layer_norm", "rms_norm", "rsqrt"})  # rsqrt: RMSNorm written out (Llama)
_ATTENTION = frozenset({"scaled_dot_product_attention", "softmax"})


@dataclass
class QuantizationSummary:
    """What ``quantize`` did (printed when ``progress`` is on)."""

    transformer: str
    preset: str
    samples: int
    weights: int
    activations: int
    skipped: int
    smoothed_groups: int
    corrected_layers: int
    seconds: float

    def __str__(self) -> str:
        lines = [
            f"quantize: {self.weights} weight and {self.activations} activation quantizers (INT8, preset "
            f"{self.preset}) from {self.samples} samples in {self.seconds:.2f} s; {self.skipped} places left in "
            f"float (see compression_controller(model).capture_report)",
            f"  model: {self.transformer}; SmoothQuant on {self.smoothed_groups} inputs; "
            f"bias correction on {self.corrected_layers} layers",
        ]
        return "\n".join(lines)


def quantize(
    model: nn.Module,
    calibration_dataset: Dataset | Iterable[Any],
    preset: QuantizationPreset | str | None = None,
    target_device: TargetDevice | str = "ANY",
    subset_size: int = 300,
    fast_bias_correction: bool = True,
    model_type: ModelType | str | None = None,
    ignored_scope: IgnoredScope | None = None,
    advanced_parameters: AdvancedQuantizationParameters | None = None,
) -> nn.Module:
    """Quantize ``model`` to INT8 (weights per channel, activations per tensor) without training.

    Example::

        calibration = nnc.Dataset(val_loader, lambda batch: batch[0])
        q = nnc.quantize(model, calibration, subset_size=300)
        nnc.export_model(q, "model_int8.onnx")

    :param model: the float model (left unchanged unless ``advanced_parameters.inplace``).
    :param calibration_dataset: a :class:`Dataset` (or any iterable of model inputs).
    :param preset: ``performance`` (symmetric) or ``mixed`` (activations with a zero point);
        default ``mixed`` for transformers, ``performance`` otherwise.
    :param target_device: accepted for compatibility; the export is standard ONNX QDQ for every value.
    :param subset_size: calibration samples to use (items are counted by their batch size).
    :param fast_bias_correction: shift biases to cancel the mean error of quantized weights.
    :param model_type: ``ModelType.TRANSFORMER`` for transformer placement and SmoothQuant;
        ``None``: detected from the graph (LayerNorm plus attention).
    :param ignored_scope: operations to leave in float.
    :param advanced_parameters: range estimator, SmoothQuant alpha, in-place, progress...
    :return: the quantized model (same class; inserted modules under ``model.nncompress``).
    :raises InvalidArgumentError: for a bad argument, a model ``copy.deepcopy`` cannot copy, or a
        call under ``torch.inference_mode()``; :class:`InitDataError` for an empty dataset, items the
        model cannot take (an input dtype that does not match the model's is named) or NaN/inf
        activations (naming the op). The model is unchanged after any error.
    """
    start = time.perf_counter()
    refuse_inference_mode("quantize()")
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if get_runtime(model) is not None:
        raise InvalidArgumentError("the model is already compressed; pass the original float model")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size <= 0:
        raise InvalidArgumentError(f"subset_size must be a positive integer, got {subset_size!r}")
    preset_choice = QuantizationPreset.parse(preset, "preset") if preset is not None else None
    TargetDevice.parse(target_device, "target_device")
    type_choice = ModelType.parse(model_type, "model_type") if model_type is not None else None
    if ignored_scope is not None and not isinstance(ignored_scope, IgnoredScope):
        raise InvalidArgumentError(
            f"ignored_scope must be an IgnoredScope, got {type(ignored_scope).__name__}"
        )
    adv = advanced_parameters or AdvancedQuantizationParameters()
    if not isinstance(adv, AdvancedQuantizationParameters):
        raise InvalidArgumentError(
            f"advanced_parameters must be AdvancedQuantizationParameters, got {type(adv).__name__}"
        )
    if not isinstance(calibration_dataset, Dataset):
        calibration_dataset = Dataset(calibration_dataset)
    samples, count = take_samples(calibration_dataset, subset_size)
    target = model if adv.inplace else _copy_model(model)
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()} if adv.inplace else None
    try:
        summary = _quantize(
            target, samples, count, preset_choice, type_choice, fast_bias_correction, ignored_scope, adv
        )
    except BaseException:
        if backup is not None:
            remove_runtime(model)
            model.load_state_dict(backup)
        raise
    summary.seconds = time.perf_counter() - start
    if adv.progress:
        print(summary, file=sys.stderr)
    return target


def _copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, or a clear error saying how to go on without a copy."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise InvalidArgumentError(
            f"quantize() works on a copy of the model and copy.deepcopy(model) failed: {type(exc).__name__}: "
            f"{exc}. Make the model deep-copyable (e.g. keep locks, open files or generators out of its "
            "attributes) or pass advanced_parameters=AdvancedQuantizationParameters(inplace=True) to "
            "quantize the model itself; the model was not changed"
        ) from exc


def is_transformer(graph: CapturedGraph) -> bool:
    """Whether the graph has a normalisation layer (LayerNorm, RMSNorm, or ``rsqrt`` as in a written-out
    RMSNorm) and attention (softmax or scaled-dot-product attention)."""
    ops = {n.op for n in graph}
    return bool(ops & _NORMS) and bool(ops & _ATTENTION)


def _quantize(
    model: nn.Module,
    samples: list[ModelInputs],
    count: int,
    preset: QuantizationPreset | None,
    model_type: ModelType | None,
    bias_correction: bool,
    ignored: IgnoredScope | None,
    adv: AdvancedQuantizationParameters,
) -> QuantizationSummary:
    was_training = model.training
    model.eval()
    try:
        context = CompressionContext(samples[0], "calibration_dataset")
        try:
            graph = context.graph_for(model)
        except CaptureError as exc:
            hint = dtype_mismatch(model, *samples[0], exc)
            raise InitDataError(
                "calibration item 0 does not fit the model: " + (f"{hint}. " if hint else "") + str(exc)
            ) from exc
        if ignored is not None:
            ignored.check(graph)
        transformer = model_type is ModelType.TRANSFORMER or (model_type is None and is_transformer(graph))
        preset = preset or (QuantizationPreset.MIXED if transformer else QuantizationPreset.PERFORMANCE)
        section = CompressionConfig.from_dict({"compression": {
            "algorithm": "quantization", "preset": preset.value, "initializer": {"range": {"num_init_samples": 0}},
        }}).algorithm_sections()[0]  # fmt: skip
        rules = _placement_rules(transformer, ignored, adv)
        smoothing = transformer and adv.smooth_quant_alpha is not None
        groups = _smooth_groups(graph, section, rules) if smoothing else []
        rules = replace(rules, input_point_ops=frozenset(op for g in groups for op in g.ops))
        builder = QuantizationBuilder(section, context, rules)
        builder.apply_to(model)
        ctrl = builder.build_controller(model)
        _insert_smoothing(model, groups)
        targets = bias_targets(model, graph, set(builder.weight_of.values())) if bias_correction else []
        _calibrate(model, ctrl, builder, samples, count, groups, targets, adv)
    finally:
        model.train(was_training)
    register_controller(model, ctrl)
    kind = "transformer" if transformer else "not a transformer"
    how = "given" if model_type is not None else "detected"
    weights = len(builder.weight_of)
    return QuantizationSummary(f"{kind} ({how})", preset.value, count, weights, len(ctrl.quantizers) - weights,
                               len(builder.report.skipped), len(groups), len(targets), 0.0)


def _placement_rules(transformer: bool, ignored: IgnoredScope | None,
                     adv: AdvancedQuantizationParameters) -> PlacementRules:
    """CNNs: the QAT placement. Transformers: residual adds, attention matmuls and pooling stay float."""
    adds = adv.quantize_residual_adds if adv.quantize_residual_adds is not None else not transformer
    return PlacementRules(
        skip_op=ignored.reason if ignored is not None else None,
        quantize_adds=adds,
        quantize_activation_matmuls=adv.quantize_attention_matmuls or not transformer,
        quantize_pooling=not transformer,
    )


def _insert_smoothing(model: nn.Module, groups: list[SmoothGroup]) -> None:
    """Put each group's :class:`ChannelScale` modules at their linear layers' inputs, before the quantizers."""
    if not groups:
        return
    layout = TransformationLayout()
    for g in groups:
        for op, cs in zip(g.ops, g.scales):
            point = TargetPoint(TargetType.OPERATION_INPUT, op, port=0)
            layout.register(InsertionCommand(point, cs, SMOOTH_GROUP, Priority.SMOOTHING))
    apply_layout(model, layout)


def _smooth_groups(graph: CapturedGraph, section: Any, rules: PlacementRules) -> list[SmoothGroup]:
    """The linear layers to smooth, grouped by the tensor they read (a dry run of the placement)."""
    params = QuantizationParams.from_section(section)
    placements, _ = place_quantizers(graph, section, params, rules)
    quantized_inputs = {c for p in placements if p.group == "activations" for c in p.consumers}
    weight_readers: dict[str, int] = {}
    for node in graph:
        for w in node.weights:
            weight_readers[w.qualified_name] = weight_readers.get(w.qualified_name, 0) + 1
    groups = []
    for producer, nodes in smoothable_linears(graph, quantized_inputs).items():
        weights = [n.weight.qualified_name for n in nodes if n.weight is not None]
        if any(weight_readers[w] != 1 for w in weights):
            continue  # a shared weight cannot take one group's scales
        channels = nodes[0].weight.shape[1] if nodes[0].weight is not None else 0
        groups.append(
            SmoothGroup(
                producer, [n.name for n in nodes], weights, [ChannelScale(channels, n.name) for n in nodes]
            )
        )
    return groups


def _calibrate(
    model: nn.Module,
    ctrl: QuantizationController,
    builder: QuantizationBuilder,
    samples: list[ModelInputs],
    count: int,
    groups: list[SmoothGroup],
    targets: list[BiasTarget],
    adv: AdvancedQuantizationParameters,
) -> None:
    """The statistics pass, then SmoothQuant, weight ranges, smoothed ranges and bias correction."""
    smoothed_ops = {op: g for g in groups for op in g.ops}
    quantizer_at = {id(q): p for p, q in zip(builder.placements, ctrl.quantizers)}
    weight_qs = [q for q in ctrl.quantizers if id(q) in builder.weight_of]
    act_qs = [q for q in ctrl.quantizers if id(q) not in builder.weight_of]
    smoothed_qs = [
        q
        for q in act_qs
        if quantizer_at[id(q)].point.target in smoothed_ops
        and quantizer_at[id(q)].point.target_type is TargetType.OPERATION_INPUT
    ]
    plain_qs = [q for q in act_qs if q not in smoothed_qs]
    estimator = adv.activations_range_estimator
    percentiles = (adv.min_percentile, adv.max_percentile)
    _statistics_pass(model, samples, count, weight_qs + smoothed_qs, plain_qs, groups, targets, adv)
    factors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for g in groups:
            inv = smooth(model, g, float(adv.smooth_quant_alpha or 0.0))
            factors.update({op: inv for op in g.ops})
        for q in weight_qs:  # after smoothing changed the weights
            q.start_collecting("min_max", 0.0, 100.0)
            q(model.get_parameter(builder.weight_of[id(q)]).detach())
            q.finish_collecting()
        pending = [q for q in smoothed_qs
                   if not _set_smoothed_range(q, smoothed_ops[quantizer_at[id(q)].point.target], estimator)]
        for cs in (cs for g in groups for cs in g.scales):
            cs.batch_min, cs.batch_max = [], []  # not kept in the model
    if pending:
        _percentile_pass(model, ctrl.quantizers, pending, samples, count, estimator, percentiles, adv.progress)
    weight_q = {builder.weight_of[id(q)]: q for q in weight_qs}
    for t in targets:
        quantized = weight_q[f"{t.module}.weight".lstrip(".")].quantized(layer_weight(model, t).detach())
        apply_shift(model, t, quantized, factors.get(t.op))


def _statistics_pass(
    model: nn.Module,
    samples: list[ModelInputs],
    count: int,
    off: list[FakeQuantizer],
    collecting: list[FakeQuantizer],
    groups: list[SmoothGroup],
    targets: list[BiasTarget],
    adv: AdvancedQuantizationParameters,
) -> None:
    """One pass of the float model: ``collecting`` quantizers and the SmoothQuant scales record
    statistics, the bias-correction hooks sum the layers' inputs, the ``off`` quantizers do nothing."""
    for q in off:
        q.enabled = False
    for q in collecting:
        q.start_collecting(adv.activations_range_estimator, adv.min_percentile, adv.max_percentile)
    scales = [cs for g in groups for cs in g.scales]
    for cs in scales:
        cs.collecting = True
    for g in groups:
        g.scales[0].recording = True  # the group's layers read one tensor: record it once
    handles = [model.get_submodule(t.module).register_forward_pre_hook(t.hook) for t in targets]
    failed = True
    try:
        _run_pass(model, samples, count, "Statistics", adv.progress)
        failed = False
    finally:
        for h in handles:
            h.remove()
        _finish_collecting(collecting, failed)
        for q in off:
            q.enabled = True
        for cs in scales:
            cs.collecting = cs.recording = False


def _finish_collecting(quantizers: list[FakeQuantizer], failed: bool) -> None:
    """End range collection. After a failed pass the quantizers only stop collecting: an error from
    setting a range out of partial (or no) statistics must not hide the error that stopped the pass."""
    for q in quantizers:
        if failed:
            q.abort_collecting()
        else:
            q.finish_collecting()


def _set_smoothed_range(q: FakeQuantizer, group: SmoothGroup, estimator: str) -> bool:
    """Set the range of a quantizer behind the group's scales from the recorded channel extremes.

    :return: ``False`` for the percentile estimators, which need the values (another pass).
    """
    if estimator not in ("min_max", "mean_min_max"):
        return False
    first = group.scales[0]
    lo, hi = scaled_tensor_range(torch.stack(first.batch_min), torch.stack(first.batch_max), first.factor, estimator)
    q.set_range(lo, hi)
    return True


def _percentile_pass(
    model: nn.Module,
    quantizers: list[FakeQuantizer],
    pending: list[FakeQuantizer],
    samples: list[ModelInputs],
    count: int,
    estimator: str,
    percentiles: tuple[float, float],
    progress: bool,
) -> None:
    """Collect the smoothed inputs' ranges with the other quantizers off (percentiles need the values)."""
    was = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    for q in pending:
        q.enabled = True
        q.start_collecting(estimator, *percentiles)
    failed = True
    try:
        _run_pass(model, samples, count, "Smoothed ranges", progress)
        failed = False
    finally:
        _finish_collecting(pending, failed)
        for q, on in zip(quantizers, was):
            q.enabled = on


def _run_pass(model: nn.Module, samples: list[ModelInputs], count: int, desc: str, progress: bool) -> None:
    with tqdm(total=count, desc=desc, unit="sample", disable=not progress, leave=False) as bar:
        with torch.inference_mode():
            for i, (args, kwargs) in enumerate(samples):
                try:
                    call_model(model, args, kwargs, f"calibration item {i}")
                except InitDataError as exc:
                    if str(exc).startswith("calibration item"):
                        raise
                    raise InitDataError(f"calibration item {i}: {exc}") from exc
                bar.update(batch_size(args, kwargs))
