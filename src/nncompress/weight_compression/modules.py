"""Layers holding compressed weights: :class:`CompressedLinear` and :class:`CompressedEmbedding`.

A weight ``W`` ``[N, K]`` quantized by :func:`~nncompress.functional.weight_quant.quantize_weight`
is stored packed in persistent buffers (what ``state_dict``, checkpoints and ONNX export read):

=================  =====================================  ===========================================
buffer             8-bit modes                            4-bit modes (INT4_SYM, INT4_ASYM, NF4)
=================  =====================================  ===========================================
``weight_packed``  int8 ``[N, Kp]`` (sym) / uint8 (asym)  uint8 ``[N, ceil(Kp / 2)]``, two codes a byte
``scale``          float32 ``[N, G]``                     float32 ``[N, G]``
``zero_point``     uint8 ``[N, G]``, ``None`` when sym    uint8 ``[N, G]``, ``None`` when sym / NF4
=================  =====================================  ===========================================

``Kp = G * g`` is ``K`` padded to whole groups. 4-bit codes are packed by
:func:`~nncompress.functional.weight_quant.pack_int4` (column ``2j`` in the low nibble of byte
``j``), INT4_SYM codes offset by +8; an odd ``Kp`` (per-row groups only) gets one padding nibble.
The float weight is ``W_hat = dequantize(codes, scale, zero_point)`` (table in
:mod:`nncompress.functional.weight_quant`).

:class:`CompressedLinear` computes ``F.linear(x * input_multiplier, W_hat, bias)``; for a few rows on
CPU it uses the bfloat16 kernels of :mod:`~nncompress.weight_compression.kernels` (see there for the
error bound), else it dequantizes the weight and runs ``F.linear`` in ``x``'s dtype (exact path).
:class:`CompressedEmbedding` dequantizes only the rows it gathers. A linear tied to an embedding (an
LM head sharing the token embedding) reads the embedding's very buffer tensors: one copy in memory
and in ``torch.save`` files.

Example::

    qw = quantize_weight(linear.weight.detach(), WeightQuantSpec.from_mode("int4_sym", 64))
    layer = CompressedLinear.from_quantized(qw, linear.bias)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nncompress.errors import InvalidArgumentError
from nncompress.functional.weight_quant import (
    NF4_LEVELS,
    QuantizedWeight,
    WeightQuantSpec,
    pack_int4,
    unpack_int4,
)
from nncompress.weight_compression.kernels import (
    MAX_KERNEL_ROWS,
    KernelWeights,
    kernel_linear,
    kernels_allowed,
    prepare_kernel,
)

#: Buffers a tied linear shares with its embedding.
SHARED_BUFFERS = ("weight_packed", "scale", "zero_point")
KERNEL_CHOICES = ("auto", "exact")


def pack_codes(codes: Tensor, spec: WeightQuantSpec) -> Tensor:
    """Storage form of int16 codes ``[N, Kp]`` (table in the module doc)."""
    if spec.bits == 8:
        return codes.to(torch.int8 if spec.symmetric else torch.uint8)
    if codes.shape[1] % 2:
        codes = F.pad(codes, (0, 1))
    return pack_int4(codes, signed=spec.symmetric and not spec.nf4)


def unpack_codes(packed: Tensor, spec: WeightQuantSpec, columns: int) -> Tensor:
    """Inverse of :func:`pack_codes`: int16 codes ``[N, columns]``."""
    if spec.bits == 8:
        return packed.to(torch.int16)
    return unpack_int4(packed, signed=spec.symmetric and not spec.nf4)[..., :columns]


def dequantize_packed(
    packed: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec, columns: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``W_hat`` ``[N, columns]`` (``columns = Kp``, padding included) straight from the storage form.

    Bit for bit :func:`~nncompress.functional.weight_quant.dequantize_codes` in ``dtype``
    (``(c - z) * s``, ``NF4_LEVELS[c] * s``), with fewer passes over the weight: 4-bit codes are split
    into nibbles as bytes, NF4 bytes are looked up two levels at a time, and the zero point and
    scale are applied in place. Works on gathered rows too (``packed``, ``scale`` with ``N`` rows).
    """
    n, groups = scale.shape
    if spec.nf4:
        levels = torch.tensor(NF4_LEVELS, dtype=dtype, device=packed.device)
        pairs = torch.stack([levels.repeat(16), levels.repeat_interleave(16)], dim=1)  # byte -> (low, high)
        values = F.embedding(packed.int(), pairs).reshape(n, -1)
    elif spec.bits == 4:
        nibbles = torch.empty(*packed.shape, 2, dtype=torch.uint8, device=packed.device)
        torch.bitwise_and(packed, 15, out=nibbles[..., 0])
        torch.bitwise_right_shift(packed, 4, out=nibbles[..., 1])
        codes = nibbles.reshape(n, -1)
        if spec.symmetric:
            codes = codes.view(torch.int8).sub_(8)
        values = codes.to(dtype)
    else:
        values = packed.to(dtype)
    if values.shape[1] != columns:
        values = values[:, :columns].contiguous()
    values = values.view(n, groups, -1)
    if zero_point is not None:
        values.sub_(zero_point.to(dtype).unsqueeze(-1))
    return values.mul_(scale.to(dtype).unsqueeze(-1)).view(n, columns)


def _version(t: Tensor) -> int:
    """In-place modification counter (inference tensors have none: -1)."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


class _PackedWeight(nn.Module):
    """Common part: the packed buffers, dequantization, and buffer sharing between tied layers."""

    weight_packed: Tensor
    scale: Tensor
    zero_point: Tensor | None

    def __init__(self, qw: QuantizedWeight) -> None:
        super().__init__()
        if qw.codes.dim() != 2 or qw.scale.shape[0] != qw.codes.shape[0]:
            raise InvalidArgumentError(
                f"codes must be [N, Kp] and scale [N, G], got {tuple(qw.codes.shape)} and {tuple(qw.scale.shape)}"
            )
        if (qw.zero_point is None) != (qw.spec.symmetric):
            raise InvalidArgumentError(f"{qw.spec.mode} {'takes no' if qw.spec.symmetric else 'needs a'} zero point")
        self.spec = qw.spec
        self.out_features = int(qw.codes.shape[0])
        self.in_features = int(qw.in_features)
        self.group_size = qw.group_size
        self.register_buffer("weight_packed", pack_codes(qw.codes, qw.spec))
        self.register_buffer("scale", qw.scale.detach().to(torch.float32).clone())
        zp = None if qw.zero_point is None else qw.zero_point.to(torch.uint8)
        self.register_buffer("zero_point", zp)
        self._tie_source: list[_PackedWeight] = []  # the layer whose buffers this one reads (0 or 1)
        self._tie_followers: list[_PackedWeight] = []  # layers reading this one's buffers
        self._kernel_cache: tuple[tuple[Any, ...], KernelWeights | None] | None = None

    @property
    def padded_in_features(self) -> int:
        """``Kp = G * g``, the stored column count."""
        return int(self.scale.shape[1]) * self.group_size

    def quantized_weight(self) -> QuantizedWeight:
        """The codes, scale and zero point as a :class:`QuantizedWeight` (int16 codes)."""
        codes = unpack_codes(self.weight_packed, self.spec, self.padded_in_features)
        zp = None if self.zero_point is None else self.zero_point.to(torch.int16)
        return QuantizedWeight(codes, self.scale, zp, self.spec, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``W_hat`` ``[N, K]`` in ``dtype`` (computed in ``dtype``: float64 gives the exact values)."""
        w = self._padded_weight(dtype)
        return w if w.shape[1] == self.in_features else w[:, : self.in_features].contiguous()

    def _padded_weight(self, dtype: torch.dtype) -> Tensor:
        """``W_hat`` with its padding columns, ``[N, Kp]``."""
        return dequantize_packed(
            self.weight_packed, self.scale, self.zero_point, self.spec, self.padded_in_features, dtype
        )

    @property
    def tied(self) -> bool:
        """Whether this layer reads another layer's buffers."""
        return bool(self._tie_source)

    def _tie(self, source: _PackedWeight) -> None:
        for name in SHARED_BUFFERS:
            self._buffers[name] = source._buffers[name]
        self._tie_source[:] = [source]
        source._tie_followers.append(self)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Any:
        # nn.Module._apply gives each module new buffer tensors: keep tied layers on one tensor,
        # converted once (by the source), whichever of the two the traversal meets first.
        self._kernel_cache = None
        order = list(self._buffers)
        if not self._tie_source:
            out = super()._apply(fn, recurse)
            for follower in self._tie_followers:
                for name in SHARED_BUFFERS:
                    follower._buffers[name] = self._buffers[name]
            return out
        saved = {name: self._buffers.pop(name) for name in SHARED_BUFFERS}
        out = super()._apply(fn, recurse)
        source = self._tie_source[0]
        merged = {name: source._buffers[name] if name in saved else self._buffers[name] for name in order}
        self._buffers.clear()
        self._buffers.update(merged)
        return out

    def _weight_repr(self) -> str:
        return (
            f"mode={self.spec.mode}, group_size={self.spec.group_size}"
            + (", tied=True" if self.tied else "")
        )


class CompressedLinear(_PackedWeight):
    """``nn.Linear`` with a quantized weight: ``y = F.linear(x * input_multiplier, W_hat, bias)``.

    :ivar spec: the weight format; ``in_features`` ``K``; ``out_features`` ``N``; ``group_size``:
        stored columns per group (``K`` for per-row).
    :ivar kernel: ``"auto"`` (bfloat16 CPU kernels for at most
        :data:`~nncompress.weight_compression.kernels.MAX_KERNEL_ROWS` rows) or ``"exact"`` (always
        dequantize and ``F.linear`` in the input's dtype).
    """

    input_multiplier: Tensor | None

    def __init__(self, qw: QuantizedWeight, bias: Tensor | None = None, input_multiplier: Tensor | None = None) -> None:
        super().__init__(qw)
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise InvalidArgumentError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        if input_multiplier is not None and tuple(input_multiplier.shape) != (self.in_features,):
            raise InvalidArgumentError(
                f"input_multiplier must have shape ({self.in_features},), got {tuple(input_multiplier.shape)}"
            )
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        im = None if input_multiplier is None else input_multiplier.detach().to(torch.float32).clone()
        self.register_buffer("input_multiplier", im)
        self._kernel = "auto"

    @classmethod
    def from_quantized(
        cls, qw: QuantizedWeight, bias: Tensor | None = None, input_multiplier: Tensor | None = None
    ) -> CompressedLinear:
        """A layer computing ``F.linear(x * input_multiplier, dequantize_weight(qw), bias)``.

        :param qw: the quantized weight ``[N, K]``.
        :param bias: ``[N]`` or ``None``.
        :param input_multiplier: ``[K]`` per-input-channel factor (AWQ's ``1 / s``) or ``None``.
        :raises InvalidArgumentError: on shapes that do not fit ``qw``.
        """
        return cls(qw, bias, input_multiplier)

    @classmethod
    def tied_to(cls, embedding: CompressedEmbedding, bias: Tensor | None = None) -> CompressedLinear:
        """An LM head ``y = x @ E_hat.T (+ bias)`` reading ``embedding``'s buffers (shared storage)."""
        layer = cls(embedding.quantized_weight(), bias)
        layer._tie(embedding)
        return layer

    @property
    def kernel(self) -> str:
        """``"auto"`` or ``"exact"`` (see the class doc)."""
        return self._kernel

    @kernel.setter
    def kernel(self, value: str) -> None:
        if value not in KERNEL_CHOICES:
            raise InvalidArgumentError(f"kernel must be one of {KERNEL_CHOICES}, got {value!r}")
        self._kernel = value
        self._kernel_cache = None

    def forward(self, x: Tensor) -> Tensor:
        """``[..., K]`` to ``[..., N]``."""
        if self.input_multiplier is not None:
            x = x * self.input_multiplier.to(x.dtype)
        kw = self._fast_weights(x)
        if kw is not None:
            y = kernel_linear(x.reshape(-1, self.in_features), kw).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        w = self._padded_weight(compute).to(x.dtype)
        if w.shape[1] != self.in_features:  # zero activations meet the padding columns
            x = F.pad(x, (0, w.shape[1] - self.in_features))
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _fast_weights(self, x: Tensor) -> KernelWeights | None:
        """The kernel layout when the fast path applies to ``x``, else ``None``."""
        if (
            self._kernel != "auto"
            or not kernels_allowed()
            or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.bfloat16)
            or not 0 < x.numel() <= MAX_KERNEL_ROWS * self.in_features
            or (x.requires_grad and torch.is_grad_enabled())
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
        ):
            return None
        tensors = [self.weight_packed, self.scale, self.zero_point]
        key = tuple(None if t is None else (t.data_ptr(), _version(t)) for t in tensors)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            kw = prepare_kernel(self.weight_packed, self.scale, self.zero_point, self.spec, self.in_features)
            self._kernel_cache = (key, kw)
        return self._kernel_cache[1]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, {self._weight_repr()}, "
            f"bias={self.bias is not None}, input_multiplier={self.input_multiplier is not None}"
        )


class CompressedEmbedding(_PackedWeight):
    """``nn.Embedding`` with a quantized table ``[num_embeddings, embedding_dim]``.

    The forward gathers the codes of the looked-up rows and dequantizes only those:
    ``out[..., :] = dequantize(codes[ids], scale[ids], zero_point[ids])``, in ``scale``'s dtype.
    Any mode works; INT8 per row (``group_size=-1``) is the usual choice.
    """

    def __init__(self, qw: QuantizedWeight, padding_idx: int | None = None) -> None:
        super().__init__(qw)
        if padding_idx is not None and not -self.out_features <= padding_idx < self.out_features:
            raise InvalidArgumentError(
                f"padding_idx must be within [-{self.out_features}, {self.out_features}), got {padding_idx}"
            )
        self.padding_idx = padding_idx

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, padding_idx: int | None = None) -> CompressedEmbedding:
        """An embedding whose table is ``dequantize_weight(qw)`` (``[vocab, dim]``)."""
        return cls(qw, padding_idx)

    @property
    def num_embeddings(self) -> int:
        """Rows of the table (``out_features``)."""
        return self.out_features

    @property
    def embedding_dim(self) -> int:
        """Columns of the table (``in_features``)."""
        return self.in_features

    def forward(self, ids: Tensor) -> Tensor:
        """Integer ids ``[...]`` to ``[..., embedding_dim]``."""
        flat = ids.reshape(-1)
        zp = None if self.zero_point is None else self.zero_point[flat]
        scale = self.scale[flat]
        rows = dequantize_packed(self.weight_packed[flat], scale, zp, self.spec, self.padded_in_features, scale.dtype)
        return rows[:, : self.in_features].reshape(*ids.shape, self.in_features)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, {self._weight_repr()}"


__all__ = ["CompressedEmbedding", "CompressedLinear", "SHARED_BUFFERS", "dequantize_packed", "pack_codes", "unpack_codes"]
