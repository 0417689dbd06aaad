"""Weight-only quantization math for LLM weight compression (``compress_weights``).

Tensor in, tensor out. A 2-D weight ``w`` of shape ``[N, K]`` (``N`` outputs, ``K`` inputs, as
``nn.Linear`` stores it) is split along ``K`` into groups of ``g`` columns; each row of each group
has one scale ``s`` (and, for asymmetric modes, one integer zero point ``z``):

==============  ======================  ====================================  ===================
mode            codes ``q``             dequantized value                     scale of a group
==============  ======================  ====================================  ===================
INT8_SYM        ``[-128, 127]``         ``q * s``                             ``absmax / 127``
INT8_ASYM       ``[0, 255]``            ``(q - z) * s``                       ``(max - min) / 255``
INT4_SYM        ``[-8, 7]``             ``q * s``                             ``w[argmax|w|] / -8``
INT4_ASYM       ``[0, 15]``             ``(q - z) * s``                       ``(max - min) / 15``
NF4             ``[0, 15]``             ``NF4_LEVELS[q] * s``                 ``absmax``
==============  ======================  ====================================  ===================

``q = clamp(round(w / s) (+ z), qmin, qmax)`` with round half to even. The INT4_SYM scale keeps
the sign of the group's largest-magnitude value so that value lands exactly on ``-8``: all 16
levels are used (NNCF does the same); the scale is then negative for a group whose extreme is
positive, which the dequantization ``q * s`` does not mind. Asymmetric ranges always hold zero
(``min <= 0 <= max``), so zero is exactly representable, as NNCF's weight compression.

Granularity is the single argument ``group_size``: ``-1`` means one group per row (per-channel),
otherwise ``K`` is split into ``ceil(K / g)`` groups; when ``g`` does not divide ``K`` the last
group is shorter. Internally the weight is padded with zero columns to ``G * g``: padding never
changes a group's scale (a zero lies inside every asymmetric range and never raises an absmax),
and its codes dequantize to exactly zero, so kernels may read the padded layout as is.

Example::

    spec = WeightQuantSpec.from_mode("int4_sym", group_size=64)
    qw = quantize_weight(w, spec)              # codes, scale, zero point
    w_hat = dequantize_weight(qw)              # [N, K], the float weight the codes stand for
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nncompress.errors import InvalidArgumentError

#: The 16 NF4 levels (normal-float 4-bit, QLoRA): quantiles of N(0, 1) rescaled to [-1, 1], with
#: an exact zero. Codes index this table.
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

MODES = ("int8_sym", "int8_asym", "int4_sym", "int4_asym", "nf4")


@dataclass(frozen=True)
class WeightQuantSpec:
    """How one weight is quantized: bit width, symmetric or not, NF4 or uniform, group size.

    :param bits: 8 or 4.
    :param symmetric: no zero point (codes centred on zero).
    :param nf4: codes index :data:`NF4_LEVELS` (4 bits, symmetric) instead of uniform levels.
    :param group_size: columns per group, ``-1`` for one group per row.
    """

    bits: int
    symmetric: bool
    nf4: bool = False
    group_size: int = -1

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise InvalidArgumentError(f"bits must be 4 or 8, got {self.bits!r}")
        if self.nf4 and (self.bits != 4 or not self.symmetric):
            raise InvalidArgumentError("NF4 is a symmetric 4-bit format")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or (
            self.group_size != -1 and self.group_size < 1
        ):
            raise InvalidArgumentError(f"group_size must be -1 (per row) or a positive int, got {self.group_size!r}")

    @classmethod
    def from_mode(cls, mode: str, group_size: int = -1) -> WeightQuantSpec:
        """The spec of a mode name in :data:`MODES` (``int8_sym``, ..., ``nf4``)."""
        if mode not in MODES:
            raise InvalidArgumentError(f"weight mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "nf4":
            return cls(4, True, True, group_size)
        return cls(int(mode[3]), mode.endswith("_sym"), False, group_size)

    @property
    def mode(self) -> str:
        """The mode name (inverse of :meth:`from_mode`)."""
        if self.nf4:
            return "nf4"
        return f"int{self.bits}_{'sym' if self.symmetric else 'asym'}"

    @property
    def code_range(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the stored codes."""
        if self.nf4:
            return 0, 15
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def with_group_size(self, group_size: int) -> WeightQuantSpec:
        """The same format with another group size."""
        return WeightQuantSpec(self.bits, self.symmetric, self.nf4, group_size)


@dataclass
class QuantizedWeight:
    """A quantized 2-D weight: integer codes per element, scale (and zero point) per row and group.

    :param codes: ``[N, G * g]`` int16 codes (padded columns hold the code of zero).
    :param scale: ``[N, G]`` float scales (float32 unless computed in float64).
    :param zero_point: ``[N, G]`` int16 zero points, ``None`` for symmetric modes.
    :param spec: the format.
    :param in_features: ``K``, the unpadded column count.
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor | None
    spec: WeightQuantSpec
    in_features: int

    @property
    def group_size(self) -> int:
        """Columns per group as stored (``K`` padded, for per-row quantization)."""
        return self.codes.shape[1] // self.scale.shape[1]


def group_count(in_features: int, group_size: int) -> tuple[int, int]:
    """``(G, g)``: number of groups and their width for ``K = in_features`` columns."""
    g = in_features if group_size == -1 else group_size
    return -(-in_features // g), g


def grouped(w: Tensor, group_size: int) -> Tensor:
    """``w`` ``[N, K]`` as ``[N, G, g]``, padded with zero columns to ``G * g``."""
    if w.dim() != 2:
        raise InvalidArgumentError(f"weight must be 2-D [out, in], got shape {tuple(w.shape)}")
    n, k = w.shape
    groups, g = group_count(k, group_size)
    if groups * g != k:
        w = torch.nn.functional.pad(w, (0, groups * g - k))
    return w.reshape(n, groups, g)


def compute_scale(w: Tensor, spec: WeightQuantSpec) -> tuple[Tensor, Tensor | None]:
    """Round-to-nearest scale and zero point of each row and group (table in the module doc).

    :param w: ``[N, K]`` weight.
    :return: ``(scale [N, G], zero_point [N, G] int16 or None)``; a group of zeros gets scale 1.
    """
    wg = grouped(w, spec.group_size)
    if spec.nf4:
        scale = wg.abs().amax(dim=-1)
        return torch.where(scale == 0, torch.ones_like(scale), scale), None
    qmin, qmax = spec.code_range
    if spec.symmetric:
        if spec.bits == 8:
            scale = wg.abs().amax(dim=-1) / qmax
        else:
            idx = wg.abs().argmax(dim=-1, keepdim=True)
            scale = wg.gather(-1, idx).squeeze(-1) / qmin
        return torch.where(scale == 0, torch.ones_like(scale), scale), None
    lo = wg.amin(dim=-1).clamp(max=0)
    hi = wg.amax(dim=-1).clamp(min=0)
    scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int16)
    return scale, zero_point


def quantize_weight(
    w: Tensor, spec: WeightQuantSpec, scale: Tensor | None = None, zero_point: Tensor | None = None
) -> QuantizedWeight:
    """Quantize ``w`` ``[N, K]`` to codes, with the given scale/zero point or round-to-nearest ones.

    :param w: the weight (float32 or float64).
    :param spec: the format.
    :param scale: ``[N, G]`` scales to use instead of :func:`compute_scale`'s (e.g. from scale
        estimation or AWQ); ``zero_point`` likewise, for asymmetric modes.
    :raises InvalidArgumentError: if ``w`` is not 2-D or holds NaN/inf, or the scale's shape is wrong.
    """
    if not torch.is_floating_point(w):
        raise InvalidArgumentError(f"weight must be a float tensor, got {w.dtype}")
    wg = grouped(w, spec.group_size)
    if scale is None:
        scale, zero_point = compute_scale(w, spec)
        # every mode's scale takes a max over its group, which NaN and inf propagate to: checking
        # the [N, G] scales finds them without another pass over the weight
        finite = bool(torch.isfinite(scale).all())
    else:
        finite = bool(torch.isfinite(wg).all())
    if not finite:
        raise InvalidArgumentError("weight holds NaN or inf values; a non-finite weight cannot be quantized")
    if tuple(scale.shape) != tuple(wg.shape[:2]):
        raise InvalidArgumentError(f"scale must have shape {tuple(wg.shape[:2])}, got {tuple(scale.shape)}")
    if not spec.symmetric and zero_point is None:
        raise InvalidArgumentError(f"{spec.mode} needs a zero point with an explicit scale")
    codes = codes_for(wg, scale, zero_point, spec)
    return QuantizedWeight(codes.reshape(w.shape[0], -1), scale, zero_point, spec, w.shape[1])


def codes_for(wg: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec) -> Tensor:
    """Codes ``[N, G, g]`` (int16) of grouped weights ``wg`` for a ``[N, G]`` scale/zero point."""
    ratio = wg / scale.unsqueeze(-1)
    if spec.nf4:
        levels = torch.tensor(NF4_LEVELS, dtype=wg.dtype, device=wg.device)
        # nearest level via the midpoints between neighbours (ties go to the upper level)
        mids = (levels[1:] + levels[:-1]) / 2
        return torch.bucketize(ratio.clamp(-1, 1).contiguous(), mids, right=True).to(torch.int16)
    qmin, qmax = spec.code_range
    q = torch.round(ratio)
    if zero_point is not None:
        q = q + zero_point.unsqueeze(-1).to(q.dtype)
    return q.clamp(qmin, qmax).to(torch.int16)


def dequantize_codes(
    codes: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec, in_features: int
) -> Tensor:
    """The float weight ``[N, in_features]`` that codes ``[N, G * g]`` stand for, in ``scale``'s dtype."""
    n, groups = scale.shape
    cg = codes.reshape(n, groups, -1)
    if spec.nf4:
        levels = torch.tensor(NF4_LEVELS, dtype=scale.dtype, device=scale.device)
        values = levels[cg.long()]
    else:
        values = cg.to(scale.dtype)
        if zero_point is not None:
            values = values - zero_point.unsqueeze(-1).to(scale.dtype)
    return (values * scale.unsqueeze(-1)).reshape(n, -1)[:, :in_features]


def dequantize_weight(qw: QuantizedWeight) -> Tensor:
    """:func:`dequantize_codes` of a :class:`QuantizedWeight`."""
    return dequantize_codes(qw.codes, qw.scale, qw.zero_point, qw.spec, qw.in_features)


def fake_quantize_weight(w: Tensor, spec: WeightQuantSpec) -> Tensor:
    """``dequantize(quantize(w))`` with round-to-nearest scales: the error a mode gives ``w``."""
    return dequantize_weight(quantize_weight(w, spec))


def pack_int4(codes: Tensor, signed: bool) -> Tensor:
    """Pack 4-bit codes ``[N, K]`` (even ``K``; signed ``[-8, 7]`` or unsigned ``[0, 15]``) two per byte.

    Element ``2j`` goes to the low nibble of byte ``j``, element ``2j + 1`` to the high nibble (the
    layout of onnxruntime's ``MatMulNBits`` and of ONNX int4 tensors). Signed codes are stored
    offset by 8 (``[0, 15]``) when ``signed``; :func:`unpack_int4` takes the same flag back.

    :return: ``[N, K / 2]`` uint8.
    """
    if codes.shape[-1] % 2:
        raise InvalidArgumentError(f"int4 packing needs an even column count, got {codes.shape[-1]}")
    u = (codes.to(torch.int16) + (8 if signed else 0)).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor, signed: bool) -> Tensor:
    """Inverse of :func:`pack_int4`: ``[N, K / 2]`` uint8 to ``[N, K]`` int16 codes."""
    low = (packed & 0x0F).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    codes = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)
    return codes - 8 if signed else codes
