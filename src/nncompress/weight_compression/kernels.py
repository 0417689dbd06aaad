"""Fast CPU matmuls for weight-compressed linears at decode time (few activation rows).

PyTorch ships two weight-only CPU kernels that read integer weights directly:

- ``torch._weight_int8pack_mm(x, w, s)``: ``y = (x @ w.T) * s`` for int8 ``w`` ``[N, K]`` and one
  scale per row (``K`` must be a multiple of 16, else the kernel crashes: we pad it);
- ``torch._weight_int4pack_mm_for_cpu(x, packed, g, sz)``: ``w[n, k] = (u[n, k] - 8) * s + z`` with
  unsigned nibbles ``u``, groups of ``g`` in ``{32, 64, 128, 256}`` (``g`` divides ``K``), ``N`` a
  multiple of 16, ``sz = [K / g, N, 2]`` holding ``(s, z)``.

Both are slow with float32 activations and fast with bfloat16 ones for few rows (SmolLM2's
``[49152, 576]`` head, one row: float32 ``F.linear`` 4.6 ms, int8 kernel 1.8 ms, int4 kernel
1.4 ms, one thread), and about twice slower than float32 ``F.linear`` for 128 rows, where dequantizing
the weight first pays off. So the fast path is used only for at most :data:`MAX_KERNEL_ROWS` rows,
with activations rounded to bfloat16; otherwise the module dequantizes its weight and runs
``F.linear`` in the activations' dtype (the exact path). Other devices always take the exact path.

How each mode maps to a kernel (``c`` = stored code, ``s`` = scale, ``z`` = zero point):

==========  ========  =================================================================
mode        kernel    mapping
==========  ========  =================================================================
INT8_SYM    int8      ``w = c``, scales ``s`` (per row only)
INT8_ASYM   int8      ``w = c - 128``; ``y -= (sum_k x_k) * s * (z - 128)`` (per row only)
INT4_SYM    int4      ``u = c + 8``, ``(s, 0)``
INT4_ASYM   int4      ``u = c``, ``(s, (8 - z) * s)``
NF4         none      no kernel: always the dequantize path
==========  ========  =================================================================

A stored group of ``g_s`` columns maps to kernel groups of the largest ``g_k`` in ``{256, 128, 64,
32}`` that divides ``g_s`` (the scale repeated); per-row layers pad ``K`` to a multiple of 32.
Padded weight columns meet zero activations, so their codes never matter.

**Error of the fast path**: activations and scales (and the INT4_ASYM offsets) are rounded to
bfloat16 (relative error ``2^-9`` each), the kernels round the weight or partial products to
bfloat16 once more and return bfloat16 (``2^-9`` again), accumulating in float32. Relative to
``sum_k |x_k| r_nk``, where ``r`` is what the kernel reads (``|w|`` for symmetric modes,
``|w| + |(c - 128) s|`` for INT8_ASYM, ``|w| + |(8 - z) s|`` for INT4_ASYM), the error of output ``n``
measured at most ``4.8 * 2^-9`` (``K = 1``) and ``2.9 * 2^-9`` (``K = 576``); the tests check
``2^-6``. Greedy decoding of SmolLM2 can therefore pick other tokens than the exact path does
once two logits are within about 1%.
Use :func:`exact_matmul` (or ``module.kernel = "exact"``) for exact float results,
e.g. for perplexity.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nncompress.functional.weight_quant import WeightQuantSpec, unpack_int4

#: At most this many activation rows (``x.numel() / K``) use the bfloat16 kernels; more rows take the
#: dequantize path. Measured (one thread, AVX-512): the kernels beat dequantize + ``F.linear`` up to
#: 32 rows for every mode and shape of SmolLM2 (``[1536, 576]``: 0.60-0.68 ms vs 0.75-1.50 ms), and
#: lose from 64 rows for INT8 (1.29 vs 0.99 ms) and from 128 rows for INT4 on ``[1536, 576]``.
MAX_KERNEL_ROWS = 32

#: Group sizes that ``torch._weight_int4pack_mm_for_cpu`` accepts, largest first.
INT4_KERNEL_GROUPS = (256, 128, 64, 32)

_state = threading.local()


@contextlib.contextmanager
def exact_matmul() -> Iterator[None]:
    """Within the block, compressed layers never use the bfloat16 kernels (exact float path).

    Example::

        with exact_matmul():
            logits = model(ids).logits      # dequantized weight, F.linear in float32
    """
    previous = getattr(_state, "exact", False)
    _state.exact = True
    try:
        yield
    finally:
        _state.exact = previous


def kernels_allowed() -> bool:
    """``False`` inside :func:`exact_matmul`."""
    return not getattr(_state, "exact", False)


@dataclass
class KernelWeights:
    """A weight in a kernel's layout (derived from the module's buffers, never saved).

    :param kind: ``"int8"`` or ``"int4"``.
    :param weight: int8 ``[N, Kp]`` or the int4-packed tensor of ``N_pad`` rows.
    :param scales: bfloat16 ``[N]`` (int8) or ``[Kp / g, N_pad, 2]`` scales and zeros (int4).
    :param offset: INT8_ASYM only: float32 ``[N]`` ``s * (z - 128)``, else ``None``.
    :param out_features: ``N``.
    :param in_padded: ``Kp``, the column count the activations are padded to.
    :param group: kernel group size (int4).
    """

    kind: str
    weight: Tensor
    scales: Tensor
    offset: Tensor | None
    out_features: int
    in_padded: int
    group: int = 0


def kernel_group(spec: WeightQuantSpec) -> int | None:
    """The int4 kernel group size for a layer's format, ``None`` when no int4 kernel applies."""
    if spec.bits != 4 or spec.nf4 or not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        return None
    if spec.group_size == -1:
        return 32  # one scale per row: any divisor works; K is padded to a multiple of 32
    return next((g for g in INT4_KERNEL_GROUPS if spec.group_size % g == 0), None)


def prepare_kernel(
    weight_packed: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec, in_features: int
) -> KernelWeights | None:
    """Build the kernel layout of a compressed weight, or ``None`` when no CPU kernel applies.

    :param weight_packed: the module's ``weight_packed`` buffer (int8/uint8 ``[N, Kp]`` or uint8
        ``[N, ceil(Kp / 2)]``).
    :param scale: ``[N, G]`` scales; ``zero_point``: ``[N, G]`` uint8 or ``None``.
    """
    if weight_packed.device.type != "cpu":
        return None
    if spec.bits == 8:
        if scale.shape[1] != 1 or not hasattr(torch, "_weight_int8pack_mm"):
            return None
        return _prepare_int8(weight_packed, scale, zero_point)
    g = kernel_group(spec)
    if g is None:
        return None
    return _prepare_int4(weight_packed, scale, zero_point, spec, in_features, g)


def _prepare_int8(weight_packed: Tensor, scale: Tensor, zero_point: Tensor | None) -> KernelWeights:
    n, kp = weight_packed.shape
    kp16 = -(-kp // 16) * 16
    s = scale[:, 0].float()
    if zero_point is None:
        w = weight_packed
        offset = None
    else:
        w = (weight_packed.to(torch.int16) - 128).to(torch.int8)
        offset = s * (zero_point[:, 0].float() - 128)
    if kp16 != kp:
        w = F.pad(w, (0, kp16 - kp))
    return KernelWeights("int8", w.contiguous(), s.to(torch.bfloat16), offset, n, kp16)


def _prepare_int4(
    weight_packed: Tensor, scale: Tensor, zero_point: Tensor | None, spec: WeightQuantSpec,
    in_features: int, g: int,
) -> KernelWeights:
    n, groups = scale.shape
    kp = groups * (in_features if spec.group_size == -1 else spec.group_size)
    u = unpack_int4(weight_packed, signed=False)[:, :kp].to(torch.int32)  # nibbles = c + 8 (sym) or c
    kpk = -(-kp // g) * g
    n16 = -(-n // 16) * 16
    u = F.pad(u, (0, kpk - kp, 0, n16 - n))
    packed = torch._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1)
    s = scale.float()
    zero = torch.zeros_like(s) if zero_point is None else (8 - zero_point.float()) * s
    reps = kpk // g if spec.group_size == -1 else spec.group_size // g
    sz = torch.stack([s, zero], dim=-1).repeat_interleave(reps, dim=1)[:, : kpk // g]  # [N, Kp/g, 2]
    sz = F.pad(sz, (0, 0, 0, 0, 0, n16 - n)).transpose(0, 1).contiguous().to(torch.bfloat16)
    return KernelWeights("int4", packed, sz, None, n, kpk, g)


def kernel_linear(x: Tensor, kw: KernelWeights) -> Tensor:
    """``x @ W.T`` ``[M, N]`` for 2-D ``x`` ``[M, K]`` through a bfloat16 kernel, in ``x``'s dtype."""
    xb = x.to(torch.bfloat16)
    if xb.shape[1] != kw.in_padded:
        xb = F.pad(xb, (0, kw.in_padded - xb.shape[1]))
    xb = xb.contiguous()
    if kw.kind == "int8":
        y = torch._weight_int8pack_mm(xb, kw.weight, kw.scales).to(x.dtype)
        if kw.offset is not None:
            y = y - xb.float().sum(dim=1, keepdim=True).to(x.dtype) * kw.offset.to(x.dtype)
        return y
    y = torch._weight_int4pack_mm_for_cpu(xb, kw.weight, kw.group, kw.scales)
    return y[:, : kw.out_features].to(x.dtype)


__all__ = [
    "INT4_KERNEL_GROUPS",
    "KernelWeights",
    "MAX_KERNEL_ROWS",
    "exact_matmul",
    "kernel_group",
    "kernel_linear",
    "kernels_allowed",
    "prepare_kernel",
]
