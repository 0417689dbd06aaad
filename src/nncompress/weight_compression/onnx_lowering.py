"""ONNX nodes computing a weight-compressed layer from its packed codes.

:mod:`~nncompress.weight_compression.onnx_export` exports a model with one placeholder node per
compressed layer; this module builds the nodes and initializers that replace each placeholder.
A weight ``W`` ``[N, K]`` with codes ``c``, scale ``s`` and zero point ``z`` (``W = (c - z) * s``
per row and group of ``g`` columns) becomes one of:

=====================  ==========================================================================
route                  nodes (``x`` ``[..., K]``; bias added last when there is one)
=====================  ==========================================================================
``matmulnbits``        ``com.microsoft::MatMulNBits(x, B, scales, zero_points, bias)``
``dequantize_linear``  ``DequantizeLinear(Wt, s, z)`` on ``W.T`` codes (int8/uint8; int4/uint4 and
                       per-group ``block_size`` need opset 21) then ``MatMul``
``decode``             codes read through a 256-entry table (4-bit) or ``Cast`` (8-bit), ``Sub z``,
                       ``Mul s``, ``Transpose``, ``MatMul``: all on constants, so onnxruntime folds
                       them into a float weight when the session starts (NF4, odd group sizes)
embedding              ``Gather`` of the code rows, then the ``decode`` steps on those rows only
=====================  ==========================================================================

MatMulNBits wants ``block_size`` a power of two ``>= 16``. A stored group ``g`` maps to blocks as
follows: ``g`` itself when it is one; else the largest power of two dividing ``g`` when it is
``>= 16``, the scale (and zero point) repeated ``g / block`` times; for a single group per row (per
channel) also the next power of two, the codes padded with the zero code (``MatMulNBits`` reads only
``K`` columns), whichever of the two takes fewer bytes (``K = 576``: 9 blocks of 64; ``K = 80``
at 4 bits: one block of 128). Other group sizes (``g = 24``...) take the ``decode`` route. The packed ``B`` is ``uint8 [N, k_blocks,
block * bits / 8]``, element ``2j`` of a block in the low nibble of byte ``j``; symmetric codes are
stored offset by ``2^(bits-1)``, which is ``MatMulNBits``' default zero point, so no zero point
input is needed; asymmetric zero points are ``uint8 [N, k_blocks]`` (8 bits) or packed two per byte
``[N, ceil(k_blocks / 2)]`` (4 bits). Negative scales (INT4_SYM keeps the sign of a group's extreme)
and a ragged last group (zero-padded codes) are read as they are. An embedding reads the same
``B``/``scales`` arrays as a ``MatMulNBits`` weight, so a tied LM head and its embedding share
them (initializers are deduplicated by content).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nncompress.errors import ExportError
from nncompress.functional.weight_quant import NF4_LEVELS, QuantizedWeight

MS_DOMAIN = "com.microsoft"
ROUTES = ("matmulnbits", "dequantize_linear", "decode")


@dataclass(frozen=True)
class BlockLayout:
    """A layer's codes re-blocked as ``MatMulNBits`` reads them.

    :param codes: unsigned codes ``[N, k_blocks, block_size]`` (int32; symmetric ones offset by
        ``2^(bits-1)``; NF4 codes index :data:`NF4_LEVELS`).
    :param scale: float32 ``[N, k_blocks]``.
    :param zero_point: ``[N, k_blocks]`` int32 (asymmetric modes) or ``None``.
    :param block_size: columns per block.
    :param nbits_ok: whether ``block_size`` suits ``MatMulNBits`` (a power of two ``>= 16``).
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    block_size: int
    nbits_ok: bool


def _block_size(g: int, groups: int, bits: int) -> tuple[int, int, bool]:
    """``(block_size, repeat, nbits_ok)`` for stored groups of ``g`` columns (module doc)."""
    if g >= 16 and g & (g - 1) == 0:
        return g, 1, True
    low = g & -g
    if groups == 1:
        pad = max(16, 1 << (g - 1).bit_length())
        # bytes a row: padded codes and one scale, or the codes and g / low scales
        if low < 16 or pad * bits // 8 + 4 <= g * bits // 8 + 4 * (g // low):
            return pad, 1, True
    if low >= 16:
        return low, g // low, True
    return g, 1, False


def block_layout(qw: QuantizedWeight) -> BlockLayout:
    """The :class:`BlockLayout` of a quantized weight (module doc: block size, padding, offsets)."""
    spec = qw.spec
    offset = 2 ** (spec.bits - 1) if spec.symmetric and not spec.nf4 else 0
    codes = qw.codes.detach().cpu().numpy().astype(np.int32) + offset  # [N, Kp]
    scale = qw.scale.detach().cpu().float().numpy()
    zp = None if qw.zero_point is None else qw.zero_point.detach().cpu().numpy().astype(np.int32)
    n, kp = codes.shape
    groups = scale.shape[1]
    bs, repeat, ok = _block_size(kp // groups, groups, spec.bits)
    if repeat > 1:
        scale = np.repeat(scale, repeat, axis=1)
        zp = None if zp is None else np.repeat(zp, repeat, axis=1)
    k_blocks = -(-qw.in_features // bs)
    cols = k_blocks * bs
    if cols <= kp:
        codes = codes[:, :cols]
    else:  # one group per row, padded to a power of two with the zero code of the row
        fill = np.full((n, cols - kp), offset, np.int32) if zp is None else np.repeat(zp[:, -1:], cols - kp, 1)
        codes = np.concatenate([codes, fill], axis=1)
    zp = None if zp is None else np.ascontiguousarray(zp[:, :k_blocks])
    return BlockLayout(codes.reshape(n, k_blocks, bs), np.ascontiguousarray(scale[:, :k_blocks]), zp, bs, ok)


def pack_nibbles(u: np.ndarray) -> np.ndarray:
    """Pack ``[..., 2m]`` values in ``[0, 15]`` two per byte, element ``2j`` in the low nibble."""
    u = u.astype(np.uint8)
    return (u[..., 0::2] & 0x0F) | ((u[..., 1::2] & 0x0F) << 4)


class GraphEdit:
    """Nodes and initializers added to a graph; initializers with equal content are stored once."""

    def __init__(self, taken: set[str]) -> None:
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken)
        self._by_content: dict[str, str] = {}

    def name(self, hint: str) -> str:
        """A fresh value name starting with ``hint``."""
        name, i = hint, 0
        while name in self._taken:
            i += 1
            name = f"{hint}_{i}"
        self._taken.add(name)
        return name

    def const(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding ``array`` (an existing one when the content is the same)."""
        array = np.ascontiguousarray(array)
        return self._add(numpy_helper.from_array(array), hint, array.dtype.str, array.shape, array.tobytes())

    def const_int4(self, values: np.ndarray, signed: bool, hint: str) -> str:
        """An INT4 (``signed``) or UINT4 initializer of integer ``values``, packed two per byte."""
        flat = values.astype(np.int32).reshape(-1)
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, np.int32)])
        raw = pack_nibbles(flat & 0x0F).tobytes()
        dtype = TensorProto.INT4 if signed else TensorProto.UINT4
        tensor = helper.make_tensor("", dtype, list(values.shape), vals=raw, raw=True)
        return self._add(tensor, hint, f"int4{signed}", values.shape, raw)

    def _add(self, tensor: onnx.TensorProto, hint: str, kind: str, shape: tuple[int, ...], raw: bytes) -> str:
        key = hashlib.sha1(f"{kind}{shape}".encode() + raw).hexdigest()
        if key not in self._by_content:
            tensor.name = self.name(hint)
            self.initializers.append(tensor)
            self._by_content[key] = tensor.name
        return self._by_content[key]

    def node(self, nodes: list[onnx.NodeProto], op: str, inputs: list[str], hint: str,
             output: str | None = None, domain: str = "", **attrs: Any) -> str:
        """Append one node to ``nodes``; return its (single) output name."""
        out = output or self.name(f"{hint}/{op}_out")
        nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{hint}/{op}"), domain=domain, **attrs))
        return out


def nbits_nodes(edit: GraphEdit, qw: QuantizedWeight, bias: np.ndarray | None, x: str, y: str,
                hint: str, accuracy_level: int) -> list[onnx.NodeProto]:
    """``y = MatMulNBits(x)`` (+ bias through the op's bias input).

    :raises ExportError: when the layer's blocks do not suit ``MatMulNBits`` or it is NF4.
    """
    lay = block_layout(qw)
    if qw.spec.nf4 or not lay.nbits_ok:
        raise ExportError(f"{hint}: {qw.spec.mode} with group size {qw.group_size} has no MatMulNBits form")
    bits = qw.spec.bits
    n, k_blocks, bs = lay.codes.shape
    packed = pack_nibbles(lay.codes) if bits == 4 else lay.codes.astype(np.uint8)
    inputs = [x, edit.const(packed, f"{hint}.B"), edit.const(lay.scale, f"{hint}.scales")]
    if lay.zero_point is not None:
        zp = lay.zero_point
        if bits == 4:
            zp = pack_nibbles(np.pad(zp, ((0, 0), (0, k_blocks % 2))))
        inputs.append(edit.const(zp.astype(np.uint8), f"{hint}.zero_points"))
    if bias is not None:
        inputs += [""] * (5 - len(inputs)) + [edit.const(bias.astype(np.float32), f"{hint}.bias")]
    nodes: list[onnx.NodeProto] = []
    edit.node(nodes, "MatMulNBits", inputs, hint, output=y, domain=MS_DOMAIN, K=qw.in_features, N=n,
              bits=bits, block_size=bs, accuracy_level=accuracy_level)
    return nodes


def dq_nodes(edit: GraphEdit, qw: QuantizedWeight, bias: np.ndarray | None, x: str, y: str,
             hint: str, opset: int) -> list[onnx.NodeProto]:
    """``y = x @ DequantizeLinear(W.T codes)`` (+ bias): per-channel axis 1, per-group ``block_size``.

    :raises ExportError: for NF4, and for 4-bit or per-group layers below opset 21.
    """
    spec, k = qw.spec, qw.in_features
    groups = qw.scale.shape[1]
    if spec.nf4 or ((spec.bits == 4 or groups > 1) and opset < 21):
        raise ExportError(
            f"{hint}: {spec.mode} with group size {spec.group_size} has no DequantizeLinear form at opset {opset}"
            " (int4 and per-group DequantizeLinear need opset 21; NF4 has none)"
        )
    codes_t = qw.codes.detach().cpu().numpy()[:, :k].T  # [K, N]
    scale = qw.scale.detach().cpu().float().numpy()
    zp = None if qw.zero_point is None else qw.zero_point.detach().cpu().numpy()
    attrs: dict[str, Any] = {"axis": 1} if groups == 1 else {"axis": 0, "block_size": qw.group_size}
    scale = scale[:, 0] if groups == 1 else scale.T  # [N] or [G, N]
    zp = None if zp is None else (zp[:, 0] if groups == 1 else zp.T)
    if spec.bits == 4:
        w = edit.const_int4(codes_t, spec.symmetric, f"{hint}.weight_q")
        z = None if zp is None else edit.const_int4(zp, False, f"{hint}.zero_point")
    else:
        w = edit.const(codes_t.astype(np.int8 if spec.symmetric else np.uint8), f"{hint}.weight_q")
        z = None if zp is None else edit.const(zp.astype(np.uint8), f"{hint}.zero_point")
    nodes: list[onnx.NodeProto] = []
    inputs = [w, edit.const(np.ascontiguousarray(scale), f"{hint}.scale")] + ([] if z is None else [z])
    wf = edit.node(nodes, "DequantizeLinear", inputs, hint, **attrs)
    _matmul_bias(edit, nodes, x, wf, bias, y, hint)
    return nodes


def _matmul_bias(edit: GraphEdit, nodes: list[onnx.NodeProto], x: str, w_t: str,
                 bias: np.ndarray | None, y: str, hint: str) -> None:
    if bias is None:
        edit.node(nodes, "MatMul", [x, w_t], hint, output=y)
        return
    mm = edit.node(nodes, "MatMul", [x, w_t], hint)
    edit.node(nodes, "Add", [mm, edit.const(bias.astype(np.float32), f"{hint}.bias")], hint, output=y)


def _nibble_tables(qw: QuantizedWeight) -> tuple[np.ndarray, np.ndarray]:
    """Float values of the low and high nibble of each byte ``0..255`` (NF4 levels or codes)."""
    b = np.arange(256)
    if qw.spec.nf4:
        levels = np.asarray(NF4_LEVELS, np.float32)
        return levels[b & 15], levels[b >> 4]
    return (b & 15).astype(np.float32), (b >> 4).astype(np.float32)


def _decode_rows(edit: GraphEdit, nodes: list[onnx.NodeProto], qw: QuantizedWeight, lay: BlockLayout,
                 ids: str | None, hint: str) -> str:
    """Float weight rows ``[R, K]``: all ``N`` rows (``ids`` ``None``) or those of flat ``ids`` ``[R]``."""
    bits, symmetric, nf4 = qw.spec.bits, qw.spec.symmetric, qw.spec.nf4

    def rows(name: str) -> str:
        return name if ids is None else edit.node(nodes, "Gather", [name, ids], hint, axis=0)

    packed = pack_nibbles(lay.codes) if bits == 4 else lay.codes.astype(np.uint8)
    b = rows(edit.const(packed, f"{hint}.B"))  # [R, kb, blob] uint8
    axis_last = edit.const(np.array([-1], np.int64), "axes_last")
    if bits == 8:
        vals = edit.node(nodes, "Cast", [b], hint, to=TensorProto.FLOAT)
    else:
        idx = edit.node(nodes, "Cast", [b], hint, to=TensorProto.INT32)
        lo_t, hi_t = _nibble_tables(qw)
        parts = [
            edit.node(nodes, "Unsqueeze", [edit.node(nodes, "Gather", [edit.const(t, name), idx], hint), axis_last],
                      hint)
            for t, name in ((lo_t, "nibble_low"), (hi_t, "nibble_high"))
        ]
        pairs = edit.node(nodes, "Concat", parts, hint, axis=-1)  # [R, kb, blob, 2]
        vals = edit.node(nodes, "Reshape", [pairs, edit.const(np.array([0, 0, -1], np.int64), "shape_00m1")], hint)
    if not nf4 and (lay.zero_point is not None or symmetric):
        if lay.zero_point is None:
            zp = edit.const(np.array(2.0 ** (bits - 1), np.float32), f"zero_code_{bits}")
        else:
            zp_rows = rows(edit.const(lay.zero_point.astype(np.uint8), f"{hint}.zero_points_u8"))
            zp = edit.node(nodes, "Unsqueeze", [edit.node(nodes, "Cast", [zp_rows], hint, to=TensorProto.FLOAT),
                                                axis_last], hint)
        vals = edit.node(nodes, "Sub", [vals, zp], hint)
    scale = edit.node(nodes, "Unsqueeze", [rows(edit.const(lay.scale, f"{hint}.scales")), axis_last], hint)
    w = edit.node(nodes, "Mul", [vals, scale], hint)  # [R, kb, bs]
    w = edit.node(nodes, "Reshape", [w, edit.const(np.array([0, -1], np.int64), "shape_0m1")], hint)
    if lay.codes.shape[1] * lay.block_size != qw.in_features:
        starts, ends = (edit.const(np.array([v], np.int64), f"{hint}.slice") for v in (0, qw.in_features))
        w = edit.node(nodes, "Slice", [w, starts, ends, edit.const(np.array([1], np.int64), "axes_1")], hint)
    return w


def decode_nodes(edit: GraphEdit, qw: QuantizedWeight, bias: np.ndarray | None, x: str, y: str,
                 hint: str) -> list[onnx.NodeProto]:
    """``y = x @ decode(codes).T`` (+ bias): any mode and group size (module doc)."""
    nodes: list[onnx.NodeProto] = []
    w = _decode_rows(edit, nodes, qw, block_layout(qw), None, hint)  # [N, K]
    w_t = edit.node(nodes, "Transpose", [w], hint, perm=[1, 0])
    _matmul_bias(edit, nodes, x, w_t, bias, y, hint)
    return nodes


def embedding_nodes(edit: GraphEdit, qw: QuantizedWeight, ids: str, y: str, hint: str) -> list[onnx.NodeProto]:
    """``y[..., :] = decode(codes[ids])``: ``Gather`` of the code rows, dequantized (module doc)."""
    nodes: list[onnx.NodeProto] = []
    flat = edit.node(nodes, "Reshape", [ids, edit.const(np.array([-1], np.int64), "shape_m1")], hint)
    rows = _decode_rows(edit, nodes, qw, block_layout(qw), flat, hint)  # [R, K]
    shape = edit.node(nodes, "Shape", [ids], hint)
    dim = edit.const(np.array([qw.in_features], np.int64), f"{hint}.dim")
    out_shape = edit.node(nodes, "Concat", [shape, dim], hint, axis=0)
    edit.node(nodes, "Reshape", [rows, out_shape], hint, output=y)
    return nodes
