"""ONNX export of weight-compressed models: packed 4/8-bit weights stay packed in the file.

:func:`export_compressed_onnx` exports a model holding
:class:`~nncompress.weight_compression.modules.CompressedLinear` and
:class:`~nncompress.weight_compression.modules.CompressedEmbedding` layers. During the export each
such layer's forward goes through a ``torch.autograd.Function`` whose ``symbolic`` emits one
placeholder node (domain ``nncompress``); the exported graph is then rewritten, each placeholder
replaced by the nodes of :mod:`~nncompress.weight_compression.onnx_lowering` reading the packed
codes as initializers. The placeholders keep the TorchScript exporter's constant folding away from
the weights (it would fold a dequantization into a float weight) and let the rewrite write ONNX
int4 tensors, which PyTorch cannot hold.

What each layer becomes (``prefer`` picks the route for INT4/INT8 linears):

==========================  ==============================  =====================================
layer                       ``prefer="matmulnbits"``        ``prefer="dequantize_linear"``
==========================  ==============================  =====================================
INT4_SYM / INT4_ASYM        ``com.microsoft::MatMulNBits``  ``DequantizeLinear`` (int4/uint4,
                            bits 4                          ``block_size``; opset 21) + ``MatMul``
INT8_SYM / INT8_ASYM        ``MatMulNBits`` bits 8 with     ``DequantizeLinear`` (int8/uint8,
                            ``accuracy_level=4``, else      per channel; per group: opset 21)
                            ``decode``
NF4                         ``decode`` (below)              ``decode``
group size with no          ``decode``                      as above
``MatMulNBits`` block
embedding (any mode)        ``Gather`` of the code rows + dequantization of those rows
==========================  ==============================  =====================================

``decode``: the codes go through a 16-entry level table (``Gather``) or ``Cast``, ``Sub`` the zero
point, ``Mul`` the scale, then ``MatMul``: constant subgraphs that onnxruntime folds into a float
weight when a session starts, so the file stays small and the layer runs as a float ``MatMul``.
NF4 has no uniform 4-bit form: ``MatMulNBits`` computes ``(q - z) * s`` only. An ``input_multiplier``
(AWQ) is a ``Mul`` before the layer; a bias is ``MatMulNBits``' bias input or an ``Add``.

**Exactness and speed.** ``accuracy_level=0`` (the default) makes ``MatMulNBits`` compute in float
(outputs match PyTorch's dequantize-then-``F.linear`` to about ``1e-6`` relative);
``accuracy_level=4`` quantizes the activations to int8 per block (about ``5e-3`` relative error)
and is the fast setting on CPU: measured with onnxruntime 1.32 on a 2-core AVX-512 VNNI Xeon, one
thread, ``K = N = 4096``, one row, float ``MatMul`` 2.43 ms, 4-bit ``MatMulNBits`` 1.14 ms
(``accuracy_level=0``) / 0.46 ms (4), 8-bit 42.7 ms (0: no fast float kernel) / 0.67 ms (4); 128
rows: float 23.2 ms, 4-bit 22.9 / 27.9 ms, 8-bit 75.0 / 15.8 ms. SmolLM2-135M, INT4_SYM g64 with
the tied head and embedding INT8_ASYM per channel, two threads: file 91 MB against 652 MB in float32;
one token 121 ms (``accuracy_level=0``) / 57 ms (4) against 161 ms in float32; 64 tokens 614 / 671 ms
against 631 ms (a shared, noisy machine: read them as ratios). onnxruntime itself fuses a
``DequantizeLinear`` + ``MatMul`` pair into ``MatMulNBits`` with ``accuracy_level`` 4 unless the
session sets ``session.qdq_matmulnbits_accuracy_level`` to ``"0"``.

The TorchScript exporter stops at opset 20: for ``opset=21`` the model is exported at 20 and the
file declares 21 (the ops that changed in 21 only gained int4 types). The model must not be
exported by two threads at once (the layers are found through a module-level table).

Example::

    export_compressed_onnx(model, ((input_ids, attention_mask), {}), "model.onnx")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nncompress.errors import ExportError, InvalidArgumentError
from nncompress.functional.weight_quant import QuantizedWeight
from nncompress.torch.export import export_onnx
from nncompress.torch.inputs import ModelInputs
from nncompress.weight_compression.modules import CompressedEmbedding, CompressedLinear
from nncompress.weight_compression.onnx_lowering import (
    MS_DOMAIN,
    GraphEdit,
    block_layout,
    decode_nodes,
    dq_nodes,
    embedding_nodes,
    nbits_nodes,
)

PREFER = ("matmulnbits", "dequantize_linear")
DEFAULT_OPSET = 17
PLACEHOLDER_DOMAIN = "nncompress"
_TORCH_MAX_OPSET = 20
#: Weights larger than this (bytes) are saved as external data, ``<file>.data`` beside the file.
EXTERNAL_DATA_BYTES = 1_800_000_000

_ACTIVE: dict[int, CompressedLinear | CompressedEmbedding] = {}


@dataclass(frozen=True)
class ExportedLayer:
    """What the rewrite needs of one compressed layer: its module name, quantized weight, bias, kind."""

    name: str
    qw: QuantizedWeight
    bias: np.ndarray | None
    embedding: bool


@contextmanager
def _untraced() -> Iterator[None]:
    """Run PyTorch ops without recording them in the exporter's trace (the placeholder's forward)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)  # type: ignore[attr-defined]


class _CompressedOp(torch.autograd.Function):
    """Placeholder of one compressed layer: computes the layer, exports as ``nncompress::<class>``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: int) -> Tensor:
        layer = _ACTIVE[index]
        with _untraced():
            if isinstance(layer, CompressedEmbedding):
                return CompressedEmbedding.forward(layer, x)
            w = layer.dequantized_weight().to(x.dtype)
            return F.linear(x, w, None if layer.bias is None else layer.bias.to(x.dtype))

    @staticmethod
    def symbolic(g: Any, x: Any, index: int) -> Any:
        layer = _ACTIVE[index]
        out = g.op(f"{PLACEHOLDER_DOMAIN}::{type(layer).__name__}", x, layer_i=index)
        sizes = x.type().varyingSizes()
        if sizes is not None:
            last = [layer.in_features] if isinstance(layer, CompressedEmbedding) else [layer.out_features]
            keep = sizes if isinstance(layer, CompressedEmbedding) else sizes[:-1]
            out.setType(x.type().with_dtype(torch.float32).with_sizes(list(keep) + last))
        return out


def _export_forward(layer: CompressedLinear | CompressedEmbedding, index: int) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        if isinstance(layer, CompressedLinear) and layer.input_multiplier is not None:
            x = x * layer.input_multiplier.to(x.dtype)  # traced: a Mul before the layer
        return _CompressedOp.apply(x, index)  # type: ignore[no-any-return]

    return forward


@contextmanager
def compressed_export_mode(model: nn.Module) -> Iterator[list[ExportedLayer]]:
    """Route every compressed layer of ``model`` through its export placeholder, for one export.

    The layers' own ``forward`` is untouched: an instance attribute shadows it inside the block
    and is removed on exit.

    :return: (as the ``with`` target) one entry per placeholder index, in module order.
    :raises ExportError: when another export is already in this mode.
    """
    if _ACTIVE:
        raise ExportError("another compressed-model ONNX export is running; exports cannot overlap")
    layers: list[ExportedLayer] = []
    patched: list[nn.Module] = []
    try:
        for name, module in model.named_modules():
            if not isinstance(module, (CompressedLinear, CompressedEmbedding)):
                continue
            index = len(layers)
            bias = getattr(module, "bias", None)
            layers.append(ExportedLayer(name, module.quantized_weight(), None if bias is None else
                                 bias.detach().cpu().float().numpy(), isinstance(module, CompressedEmbedding)))
            _ACTIVE[index] = module
            module.forward = _export_forward(module, index)  # type: ignore[method-assign, assignment]
            patched.append(module)
        yield layers
    finally:
        for module in patched:
            del module.forward
        _ACTIVE.clear()


def _check_args(prefer: str, opset: int, accuracy_level: int) -> None:
    if prefer not in PREFER:
        raise InvalidArgumentError(f"prefer must be one of {PREFER}, got {prefer!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise InvalidArgumentError(f"opset must be an int in 13..21 for a compressed export, got {opset!r}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise InvalidArgumentError(f"accuracy_level must be 0, 1, 2, 3 or 4, got {accuracy_level!r}")


def _route(layer: ExportedLayer, prefer: str, opset: int, accuracy_level: int) -> str:
    """``matmulnbits``, ``dequantize_linear`` or ``decode`` for a linear (table in the module doc).

    :raises ExportError: for a ``dequantize_linear`` layer that needs opset 21 below it.
    """
    spec = layer.qw.spec
    if spec.nf4:
        return "decode"
    if prefer == "matmulnbits":
        if spec.bits == 8 and accuracy_level != 4:
            return "decode"  # 8-bit MatMulNBits computing in float is 10-20x slower than a float MatMul
        return "matmulnbits" if block_layout(layer.qw).nbits_ok else "decode"
    if (spec.bits == 4 or layer.qw.scale.shape[1] > 1) and opset < 21:
        raise ExportError(
            f"layer {layer.name!r} ({spec.mode}, group size {spec.group_size}) needs opset 21 for "
            f"DequantizeLinear (int4 types, block_size), got opset {opset}; use opset=21 or prefer='matmulnbits'"
        )
    return "dequantize_linear"


def lower_placeholders(proto: onnx.ModelProto, layers: list[ExportedLayer], prefer: str, opset: int,
                       accuracy_level: int = 0) -> dict[str, int]:
    """Replace each placeholder node of an exported graph by its layer's nodes (in place).

    :param proto: the model exported in :func:`compressed_export_mode`.
    :param layers: that mode's layer table.
    :return: how many layers took each route (``matmulnbits``, ``dequantize_linear``, ``decode``,
        ``embedding``).
    """
    graph = proto.graph
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {v.name for v in graph.input}
    edit = GraphEdit(taken)
    nodes: list[onnx.NodeProto] = []
    counts = {"matmulnbits": 0, "dequantize_linear": 0, "decode": 0, "embedding": 0}
    for node in graph.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            nodes.append(node)
            continue
        layer = layers[next(a.i for a in node.attribute if a.name == "layer")]
        x, y, hint = node.input[0], node.output[0], layer.name or "layer"
        if layer.embedding:
            nodes += embedding_nodes(edit, layer.qw, x, y, hint)
            counts["embedding"] += 1
            continue
        route = _route(layer, prefer, opset, accuracy_level)
        if route == "matmulnbits":
            nodes += nbits_nodes(edit, layer.qw, layer.bias, x, y, hint, accuracy_level)
        elif route == "dequantize_linear":
            nodes += dq_nodes(edit, layer.qw, layer.bias, x, y, hint, opset)
        else:
            nodes += decode_nodes(edit, layer.qw, layer.bias, x, y, hint)
        counts[route] += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(edit.initializers)
    _set_opsets(proto, opset, counts["matmulnbits"] > 0)
    return counts


def _set_opsets(proto: onnx.ModelProto, opset: int, microsoft: bool) -> None:
    imports = [o for o in proto.opset_import if o.domain not in ("", "ai.onnx", PLACEHOLDER_DOMAIN, MS_DOMAIN)]
    imports.append(onnx.helper.make_opsetid("", opset))
    if microsoft:
        imports.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    del proto.opset_import[:]
    proto.opset_import.extend(imports)


def _as_inputs(example_inputs: Any) -> ModelInputs:
    """``(args, kwargs)`` from a tensor, a tuple of positional inputs, a dict or ``(args, kwargs)``."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2 and isinstance(example_inputs[0], tuple)
            and isinstance(example_inputs[1], dict)):
        return example_inputs[0], example_inputs[1]
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise InvalidArgumentError(
        f"example_inputs must be a tensor, a tuple of inputs, a dict of keyword inputs or (args, kwargs), "
        f"got {type(example_inputs).__name__}"
    )


def export_compressed_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    prefer: str = "matmulnbits",
    accuracy_level: int = 0,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> dict[str, int]:
    """Export a model with compressed layers to ONNX at ``path``, weights packed (module doc).

    :param model: a model holding ``CompressedLinear`` / ``CompressedEmbedding`` layers (any other
        layer is exported as usual).
    :param example_inputs: a tensor, a tuple of positional inputs, a dict of keyword inputs, or
        ``(args, kwargs)``.
    :param path: the ``.onnx`` file; written atomically (nothing is left on failure).
    :param opset: ONNX opset, 13..21 (21 for int4 ``DequantizeLinear``).
    :param prefer: ``"matmulnbits"`` (onnxruntime's contrib op) or ``"dequantize_linear"``
        (standard ONNX only).
    :param accuracy_level: ``MatMulNBits``' ``accuracy_level``: 0 exact, 4 int8 compute (faster).
    :param input_names: graph input names; axis 0 of each input is a dynamic batch axis.
    :param output_names: graph output names.
    :param dynamic_axes: ``{input or output name: {axis: name}}``, e.g.
        ``{"input_ids": {0: "batch", 1: "sequence"}}`` so an LLM takes any length; default: axis 0
        of every input.
    :return: the number of layers per route (``matmulnbits``, ``dequantize_linear``, ``decode``,
        ``embedding``).
    :raises InvalidArgumentError: for a bad ``prefer``, ``opset`` or ``accuracy_level``, or a model
        holding float16/bfloat16/float64 tensors (float32 only).
    :raises ExportError: when the export or a layer's rewrite fails (message names the layer).
    """
    _check_args(prefer, opset, accuracy_level)
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    if dtypes - {torch.float32}:
        raise InvalidArgumentError(
            f"export_compressed_onnx exports float32 models (scales and activations float32), the model holds "
            f"{sorted(str(d) for d in dtypes)}; call model.float() first"
        )
    target = Path(path)
    inputs = _as_inputs(example_inputs)
    with tempfile.TemporaryDirectory(prefix="nncompress_onnx_") as tmp:
        traced = Path(tmp) / "traced.onnx"
        with compressed_export_mode(model) as layers:
            for layer in layers:
                if not layer.embedding:
                    _route(layer, prefer, opset, accuracy_level)  # fail before the (slow) export
            try:
                export_onnx(model, inputs, traced, min(opset, _TORCH_MAX_OPSET), input_names, output_names,
                            dynamic_axes)
            except ExportError as exc:
                raise _export_error(exc, target) from exc
        proto = onnx.load(str(traced))
        counts = lower_placeholders(proto, layers, prefer, opset, accuracy_level)
        _save_atomic(proto, target)
    return counts


def _export_error(exc: ExportError, target: Path) -> ExportError:
    """The exporter's error, naming ``target`` rather than the temporary file, with a hint."""
    cause = exc.__cause__
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    if "aten::diff" in detail:  # transformers' packed-sequence check, run only without a mask
        detail += "; a Hugging Face causal LM exports when the example inputs hold an attention_mask"
    return ExportError(f"ONNX export to {str(target)!r} failed: {detail}")


def _save_atomic(proto: onnx.ModelProto, target: Path) -> None:
    """Write ``proto`` under a temporary name beside ``target``, then rename it to ``target``.

    Weights over :data:`EXTERNAL_DATA_BYTES` go to ``<target name>.data`` beside it (protobuf files
    stop at 2 GiB); that file is written in place, not renamed.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {str(target.parent)!r}: {exc.strerror or exc}") from exc
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    data = target.parent / f"{target.name}.data"
    external = sum(len(i.raw_data) for i in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    try:
        if external:
            onnx.save(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data.name, size_threshold=1024)
        else:
            onnx.save(proto, str(tmp))
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        if external and data.exists():
            data.unlink()
        raise ExportError(f"writing the ONNX file {str(target)!r} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "EXTERNAL_DATA_BYTES", "PREFER", "ExportedLayer", "compressed_export_mode", "export_compressed_onnx",
    "lower_placeholders",
]
