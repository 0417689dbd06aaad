"""Where quantizers go: inputs and weights of the ops integer kernels run.

* Weights of ``conv*``, ``linear``, ``matmul``/``mm``/``bmm``/``addmm`` and ``embedding``: one
  quantizer on the weight as the op reads it, per-channel along the output channels.
* Activations feeding ``conv*``, ``linear``, ``matmul``/``mm``/``bmm``/``addmm``/``baddbmm``,
  element-wise ``add`` of two activations and average pooling (``avg_pool*``, ``adaptive_avg_pool*``,
  and ``mean`` over all spatial axes of a feature map), so that the conv before a global pooling
  has a requantized output and runs as an integer kernel: one quantizer on the output of the op producing them,
  shared by every consumer of that tensor (a tensor read by three convs is quantized once).
  Producers with several outputs get a quantizer at each consumer's input instead. Model inputs
  are quantized when ``quantize_inputs`` is set; constants and buffers, integer tensors and
  a conv output that also feeds its BatchNorm (which export folds into the conv) are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nncompress.config import AlgorithmSection
from nncompress.graph.capture import CapturedGraph, OpNode
from nncompress.graph.layout import TargetPoint, TargetType
from nncompress.graph.scopes import scope_matches

from ..selection import CaptureReport, ReportRow, validate_scopes
from .params import QuantizationParams, QuantizerParams

WEIGHT_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "linear", "matmul", "mm", "bmm", "addmm", "embedding",
})  # fmt: skip
_ADDS = ("add", "add_", "iadd")  # ``x += y`` runs as ``add_``
POOL_OPS = frozenset({
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
})  # fmt: skip
ACTIVATION_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", *_ADDS, "mean", *POOL_OPS,
})  # fmt: skip
_FUSED_AFTER_CONV = frozenset({"batch_norm", "relu", "relu_", "relu6", "hardtanh", "silu", "gelu"})
_CONV = frozenset(op for op in WEIGHT_OPS if op.startswith("conv"))
_MATMUL = frozenset({"matmul", "mm", "bmm", "baddbmm"})


@dataclass(frozen=True)
class PlacementRules:
    """Choices beyond the config section, set by post-training quantization.

    :param skip_op: returns why an op is left unquantized (its weight and inputs), or ``None``.
    :param quantize_adds: quantize the inputs of element-wise ``add`` of two activations
        (integer adds in CNNs; the residual stream of a transformer is better left in float).
    :param quantize_activation_matmuls: quantize ``matmul``/``bmm`` of two activations
        (attention scores and context).
    :param quantize_pooling: quantize the inputs of average pooling (CNNs).
    :param input_point_ops: ops whose activation inputs get a quantizer of their own at the
        input port instead of one shared at the producer's output (SmoothQuant scales sit there).
    """

    skip_op: Callable[[OpNode], str | None] | None = None
    quantize_adds: bool = True
    quantize_activation_matmuls: bool = True
    quantize_pooling: bool = True
    input_point_ops: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class QuantizerPlacement:
    """One quantizer to insert.

    :param point: where.
    :param group: ``weights`` or ``activations``.
    :param params: its settings (scope overrides applied).
    :param channel_axis: the per-channel axis of the quantized tensor, ``None`` for per-tensor.
    :param num_channels: the size of that axis (1 for per-tensor).
    :param consumers: the ops it feeds.
    """

    point: TargetPoint
    group: str
    params: QuantizerParams
    channel_axis: int | None
    num_channels: int
    consumers: tuple[str, ...]


def weight_output_axis(node: OpNode, port: int, ndim: int) -> int:
    """The output-channel axis of a weight read by ``node`` at ``port`` (``ndim`` dimensions)."""
    if node.op.startswith("conv_transpose"):
        return 1
    if node.op in ("matmul", "mm", "bmm", "addmm"):
        return ndim - 1 if port >= 1 else ndim - 2  # x @ W: output features are W's last axis
    return 0


def place_quantizers(
    graph: CapturedGraph, section: AlgorithmSection, params: QuantizationParams, rules: PlacementRules | None = None
) -> tuple[list[QuantizerPlacement], CaptureReport]:
    """All quantizers for the graph, and a report of every potential place with its outcome."""
    validate_scopes(graph, section)
    rules = rules or PlacementRules()
    report = CaptureReport(section.algorithm, subject="potential quantizer places (weights, op inputs)")
    placements: list[QuantizerPlacement] = []

    def skip_reason(name: str, group: str) -> str | None:
        if rules.skip_op is not None:
            why = rules.skip_op(graph.nodes[name])
            if why is not None:
                return why
        hit = next((p for p in section.ignored_scopes if scope_matches(name, p)), None)
        if hit is not None:
            return f"matches ignored_scopes entry {hit!r}"
        if section.target_scopes is not None and not any(scope_matches(name, p) for p in section.target_scopes):
            return "outside target_scopes"
        return params.in_group_scope(name, group)

    weights_done: dict[str, str] = {}
    for node in graph.weighted_nodes():
        w = node.weight
        if w is None or node.op not in WEIGHT_OPS:
            continue
        reason = skip_reason(node.name, "weights")
        if reason is None and w.qualified_name in weights_done:
            reason = f"weight shared with {weights_done[w.qualified_name]}, quantized there"
        qp = params.for_point(node.name, "weights")
        axis = weight_output_axis(node, w.port, len(w.shape)) if qp.per_channel else None
        report.rows.append(ReportRow(node.name, node.op, w.qualified_name, w.shape, reason is None,
                                     reason or f"weight, {qp.bits} bit", section.algorithm))
        if reason is None:
            weights_done[w.qualified_name] = node.name
            placements.append(QuantizerPlacement(
                TargetPoint(TargetType.WEIGHT, w.module, param=w.param), "weights", qp, axis,
                w.shape[axis] if axis is not None else 1, (node.name,),
            ))
    placements += _place_activations(graph, section, params, rules, report, skip_reason)
    if params.quantize_outputs:
        taken = {p.point.target for p in placements if p.point.target_type is TargetType.OPERATION_OUTPUT}
        for producer in graph.outputs:
            out_node = graph.nodes.get(producer)
            if out_node is None or producer in taken or not out_node.output_dtypes[0].is_floating_point:
                continue
            qp = params.for_point(producer, "activations")
            report.rows.append(ReportRow(producer, out_node.op, "model output", (), True, "quantize_outputs",
                                         section.algorithm))
            placements.append(QuantizerPlacement(TargetPoint(TargetType.OPERATION_OUTPUT, producer),
                                                 "activations", qp, None, 1, ()))
            taken.add(producer)
    return placements, report


def _place_activations(graph, section, params, rules, report, skip_reason) -> list[QuantizerPlacement]:  # type: ignore[no-untyped-def]
    consumers = graph.consumers()
    placed: dict[str, int] = {}  # producer -> index in out
    out: list[QuantizerPlacement] = []
    for node in graph:
        if node.op not in ACTIVATION_OPS:
            continue
        weight_ports = {w.port for w in node.weights}
        data_ports = [p for p in range(len(node.inputs)) if p not in weight_ports]
        if node.op in _ADDS and len(data_ports) < 2:
            continue  # x + constant: not an integer kernel
        if node.op in POOL_OPS or node.op == "mean":
            if node.op == "mean" and not _is_global_mean(graph, node):
                continue  # a mean inside a layer (a norm, a loss), not pooling
            data_ports = data_ports[:1]
        own_port = node.name in rules.input_point_ops
        for port in data_ports:
            producer = node.inputs[port]
            label = f"input {port} from {producer or 'a constant'}"
            reason = skip_reason(node.name, "activations")
            if reason is None:
                reason = _rule_skip(node, rules) or _activation_skip(graph, node, port, producer, params, consumers)
            if reason is None and port == 0 and node.op.endswith("_") and not _at_output(graph, producer, own_port):
                # a quantizer at this input would hand the op a copy: ``x.add_(y)`` would write the copy,
                # and a later read of ``x`` (not rebound to the op's result) would miss the write
                reason = "written in place by this op and not quantizable where it is produced"
            if reason is None and producer in placed and not own_port:
                i = placed[producer]
                out[i] = QuantizerPlacement(out[i].point, "activations", out[i].params, None, 1,
                                            (*out[i].consumers, node.name))
                report.rows.append(ReportRow(node.name, node.op, label, (), True,
                                             f"shares the quantizer after {producer}", section.algorithm))
                continue
            qp = params.for_point(node.name, "activations")
            report.rows.append(ReportRow(node.name, node.op, label, (), reason is None,
                                         reason or f"activation, {qp.bits} bit", section.algorithm))
            if reason is not None:
                continue
            assert producer is not None
            if _at_output(graph, producer, own_port):
                point = TargetPoint(TargetType.OPERATION_OUTPUT, producer)
                placed[producer] = len(out)
            else:  # a model input or one output of several: quantize at this consumer's input
                point = TargetPoint(TargetType.OPERATION_INPUT, node.name, port=port)
            out.append(QuantizerPlacement(point, "activations", qp, None, 1, (node.name,)))
    return out


def _at_output(graph: CapturedGraph, producer: str | None, own_port: bool) -> bool:
    """Whether an activation from ``producer`` is quantized at its output (else at the consumer's input):
    not for a model input, one output of several, or a consumer that asks for its own quantizer."""
    if producer is None or producer.startswith("@") or own_port:
        return False
    return len(graph.nodes[producer].output_shapes) == 1


def _is_global_mean(graph: CapturedGraph, node: OpNode) -> bool:
    """``mean`` of an (N, C, *spatial) feature map over all its spatial axes (global average pooling)."""
    producer = graph.nodes.get(node.inputs[0] or "") if node.inputs else None
    if producer is None or not producer.output_shapes or not node.output_shapes:
        return False
    shape_in, shape_out = producer.output_shapes[0], node.output_shapes[0]
    # 2-d and 3-d feature maps only: a mean over the last axis of (B, T, D) is a norm, not pooling
    return len(shape_in) >= 4 and tuple(shape_out) in (tuple(shape_in[:2]), (*shape_in[:2], *[1] * (len(shape_in) - 2)))


def _rule_skip(node: OpNode, rules: PlacementRules) -> str | None:
    if (node.op in POOL_OPS or node.op == "mean") and not rules.quantize_pooling:
        return "pooling left in float (transformer placement)"
    if node.op in _ADDS and not rules.quantize_adds:
        return "residual add left in float (transformer placement)"
    if node.op in _MATMUL and not node.weights and not rules.quantize_activation_matmuls:
        return "matmul of two activations (attention) left in float"
    return None


def _activation_skip(
    graph: CapturedGraph, node: OpNode, port: int, producer: str | None, params: QuantizationParams,
    consumers: dict[str, list[tuple[str, int]]],
) -> str | None:
    if producer is None:
        return "a constant or buffer, not an activation"
    if node.input_dtypes and not node.input_dtypes[port].is_floating_point:
        return f"integer tensor ({node.input_dtypes[port]})"
    if producer.startswith("@"):
        return None if params.quantize_inputs else "model input and quantize_inputs is false"
    prod = graph.nodes[producer]
    if prod.op in _CONV and any(graph.nodes[c].op in _FUSED_AFTER_CONV for c, _ in consumers.get(producer, [])):
        return f"between {prod.op} and the BatchNorm/activation fused with it"
    if prod.output_dtypes and not prod.output_dtypes[0].is_floating_point:
        return "integer tensor"
    return None


def feeds_inplace_op(graph: CapturedGraph, placement: QuantizerPlacement,
                     consumers: dict[str, list[tuple[str, int]]]) -> bool:
    """Whether an in-place op (``out += identity`` runs ``add_``) overwrites the quantizer's output.

    The learnable quantizer keeps its output for the backward pass, so such a quantizer must
    hand out a copy. Only output quantizers can be overwritten: the written input of an in-place
    op is never quantized at the op's own input (:func:`place_quantizers` leaves it in float).

    :param consumers: ``graph.consumers()``.
    """
    point = placement.point
    if point.target_type is TargetType.OPERATION_OUTPUT:
        return any(graph.nodes[c].op.endswith("_") and port == 0
                   for c, port in consumers.get(point.target, []))
    return False
