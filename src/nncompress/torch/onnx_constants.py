"""Fold QuantizeLinear of constant weights into integer initializers in an exported ONNX graph.

The TorchScript exporter writes a quantized weight as ``initializer -> QuantizeLinear ->
DequantizeLinear``; onnxruntime never constant-folds QuantizeLinear, and its QDQ fusions
(QLinearConv, QLinearMatMul) want the weight's DequantizeLinear to read an int8 initializer. This
pass computes those QuantizeLinear nodes once (``saturate(round_half_even(x / scale) + zero_point)``,
per tensor or along ``axis``) and stores the result as the initializer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

_PASS_THROUGH = {"Identity"}


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.int32)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def fold_constant_quantize(model: onnx.ModelProto) -> int:
    """Replace every QuantizeLinear of a constant by its integer result, and bypass Identity
    nodes of constants so scales and zero points are read from initializers (in place).

    :param model: the exported model.
    :return: the number of QuantizeLinear nodes folded.
    """
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    folded, keep = 0, []
    alias: dict[str, str] = {}  # Identity of a constant: read the constant itself
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        if node.op_type in _PASS_THROUGH and node.input[0] in consts:
            alias[node.output[0]] = node.input[0]
            continue
        if node.op_type == "QuantizeLinear" and len(node.input) == 3 and all(i in consts for i in node.input):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            x, scale, zp = (consts[i] for i in node.input)
            q = _quantize(x, scale, zp, axis if axis >= 0 else axis + x.ndim)
            graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
            consts[node.output[0]] = q
            folded += 1
            continue
        keep.append(node)
    for out in graph.output:
        if out.name in alias:  # a graph output must keep its name: keep that Identity
            keep.append(onnx.helper.make_node("Identity", [alias[out.name]], [out.name]))
    del graph.node[:]
    graph.node.extend(keep)
    _drop_unused(graph)
    return folded


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes and initializers nothing reads any more (repeat until stable)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in _PASS_THROUGH | {"Constant"} and not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
