"""Shape rules that prove where an op puts the channel dimension (dim 1) of its input.

The captured graph holds the shapes an op read and returned, not its other arguments (the dims a
``mean`` reduced, the dim a ``cat`` joined along). These functions recover what the shapes
prove and return ``None`` where the shapes allow more than one reading: the caller then refuses
to prune, rather than guess. Example: ``mean`` of ``(2, 8, 8, 8)`` giving ``(2, 8)`` may have
reduced dims (2, 3) or (1, 2), so it proves nothing; giving ``(2, 8, 1, 1)`` it proves dim 1 kept.
"""

from __future__ import annotations

import math
from itertools import combinations

Shape = tuple[int, ...]

# Ops that apply the same function to every element: the channel layout passes through.
# Zero stays zero through these (f(0) == 0), so removed (zeroed) channels stay zero.
ZERO_PRESERVING_UNARY = frozenset({
    "relu", "relu_", "relu6", "hardswish", "hardswish_", "gelu", "silu", "silu_",
    "elu", "elu_", "leaky_relu", "leaky_relu_", "selu", "selu_", "celu", "celu_", "mish", "tanh", "tanh_",
    "softsign", "tanhshrink", "hardshrink", "softshrink", "neg", "dropout", "dropout_", "dropout1d",
    "dropout2d", "dropout3d", "feature_dropout", "clone", "contiguous", "detach", "float", "to", "type_as",
})  # fmt: skip
# Ops whose result may share its input's storage (besides the reshapes): an in-place op on either
# tensor changes both.
ALIASING_UNARY = frozenset({"detach", "contiguous", "to", "float", "type_as"})
# ``hardtanh(x, min_val, max_val)`` keeps zero only if ``min_val <= 0 <= max_val``; the bounds are
# not in the capture, so it counts as zero-preserving only when an ``nn.Hardtanh`` module (ReLU6
# among them) runs it with such bounds (see ``channel_handlers.unary``).
HARDTANH = frozenset({"hardtanh", "hardtanh_"})
# Elementwise but f(0) != 0 (or unknown bounds): channels keep their place, removed ones do not stay zero.
NONZERO_UNARY = frozenset({
    "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "softplus", "exp", "exp_", "cos", "clamp", "clamp_",
    "clamp_min", "clamp_min_", "clamp_max", "clip", "logsigmoid",
    "alpha_dropout", "feature_alpha_dropout",  # training: kept entries become a * x + b, so 0 -> b
})  # fmt: skip
# Ops over spatial dims only: the output keeps dims 0 and 1 (checked on shapes), zero stays zero.
# (``pad`` is taken to fill with zeros, its default, or to reflect/replicate: a non-zero constant
# fill value is not in the capture.)
SPATIAL = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pad",
})  # fmt: skip
REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "nanmean", "nansum"})
RESHAPES = frozenset({"view", "reshape", "flatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"})
BINARY = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "multiply"})
CONCAT = frozenset({"cat", "concat", "concatenate"})
CONVS = frozenset({"conv1d", "conv2d", "conv3d"})
CONV_TRANSPOSES = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})


def reduction_keeps_channels(in_shape: Shape, out_shape: Shape) -> bool:
    """Whether every reduction that turns ``in_shape`` into ``out_shape`` keeps dim 1 as dim 1.

    Tries every set of reduced dims with and without ``keepdim``; the reduction is proven
    channel-preserving only if all readings that give ``out_shape`` leave dim 1 in place.

    :param in_shape: the reduced tensor's shape (channels at dim 1).
    :param out_shape: the result's shape.
    :return: ``True`` if the shapes prove dim 1 stays dim 1 with all its channels.
    """
    if len(in_shape) < 2:
        return False
    readings = 0
    for k in range(len(in_shape) + 1):
        for dims in combinations(range(len(in_shape)), k):
            for keepdim in (True, False):
                shape = tuple(1 if d in dims else s for d, s in enumerate(in_shape)) if keepdim else tuple(
                    s for d, s in enumerate(in_shape) if d not in dims)
                if shape != out_shape:
                    continue
                readings += 1
                channel_at = 1 if keepdim else 1 - (0 in dims)
                if 1 in dims or channel_at != 1:
                    return False
    return readings > 0


def reshape_channel_factor(in_shape: Shape, out_shape: Shape) -> int | None:
    """How a row-major reshape (view, flatten, squeeze...) spreads each dim-1 index of the input.

    With ``R_in = prod(in_shape[2:])`` and ``R_out = prod(out_shape[2:])``, the batch dim kept,
    one input channel covers ``R_in / R_out`` consecutive output indices along dim 1 if
    ``R_out`` divides ``R_in`` (``(N, C, H, W) -> (N, C*H*W)`` gives ``H*W``). Any other reshape
    mixes channels with other dims.

    :param in_shape: input shape (channels at dim 1).
    :param out_shape: output shape.
    :return: the factor, or ``None`` if the reshape does not keep whole channels on dim 1.
    """
    if len(in_shape) < 2 or len(out_shape) < 2 or in_shape[0] != out_shape[0]:
        return None
    r_in, r_out = math.prod(in_shape[2:]), math.prod(out_shape[2:])
    if r_out == 0 or r_in % r_out:
        return None
    factor = r_in // r_out
    return factor if out_shape[1] == in_shape[1] * factor else None


def concat_dim(shapes: list[Shape | None], out_shape: Shape) -> int | None:
    """The dim a concatenation joined along, from the inputs' shapes (``None``: unknown shape).

    :param shapes: the inputs' shapes; at most one may be unknown (its size is the rest).
    :param out_shape: the result's shape.
    :return: the dim, or ``None`` when the shapes do not prove one.
    """
    known = [s for s in shapes if s is not None]
    if not known or any(len(s) != len(out_shape) for s in known):
        return None
    dims = {d for s in known for d in range(len(s)) if s[d] != out_shape[d]}
    if len(dims) == 1:
        dim = dims.pop()
        total = sum(s[dim] for s in known)
        missing = len(shapes) - len(known)
        return dim if (missing == 0 and total == out_shape[dim]) or (missing == 1 and total < out_shape[dim]) else None
    if not dims and len(shapes) == 1:
        return 1  # a single tensor: any dim, the same tensor
    return None


def broadcast_channels(shape: Shape, out_shape: Shape) -> int | None:
    """Size of an operand's dim that broadcasts onto dim 1 of an elementwise op's output.

    :param shape: the operand's shape.
    :param out_shape: the output's shape (channels at dim 1).
    :return: the operand's size on that dim (1 if it has no such dim), ``None`` if the shapes do
        not broadcast.
    """
    lead = len(out_shape) - len(shape)
    if lead < 0:
        return None
    for d, s in enumerate(shape):
        if s not in (1, out_shape[lead + d]):
            return None
    return shape[1 - lead] if 1 - lead >= 0 else 1
