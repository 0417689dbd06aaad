"""How each kind of op moves channel groups (used by :mod:`nncompress.graph.channel_groups`).

Each handler gets the builder, the op and the layout of each tensor input (``None``: carries no
group) and returns the layout of the op's output (``None``: carries none). A handler that cannot
prove what the op does to the channels makes the groups it reads unprunable, naming the op.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from nncompress.graph import channel_rules as rules
from nncompress.graph.capture import OpNode
from nncompress.graph.channel_groups import GroupBuilder, Layout, Segment

Ins = list[Layout | None]


def _others(b: GroupBuilder, node: OpNode, ins: Ins, used: int = 1) -> bool:
    """Refuse groups read at ports past the first ``used``; whether there were any."""
    extra = [x for x in ins[used:] if x]
    b.refuse_all(extra, f"{node.name} ({node.op}) reads the channels in an argument other than its input")
    return bool(extra)


def _total(layout: Layout) -> int:
    return sum(s.size * s.repeat for s in layout)


def _nonzero(layout: Layout, op: str) -> Layout:
    return tuple(s if s.nonzero else replace(s, nonzero=op) for s in layout)


def conv(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """Convolutions: ordinary ones start a group and consume their input's; depthwise ones are
    channelwise (output channel ``c*m + j`` follows input channel ``c``); grouped ones refuse."""
    x = ins[0] if ins else None
    _others(b, node, ins)
    found = b.owner(node, (_ConvNd,), 1)
    if isinstance(found, str):
        b.refuse(x, found)
        return None
    name, m = found
    assert isinstance(m, _ConvNd)  # owner() checked the type
    transpose = node.op in rules.CONV_TRANSPOSES
    out_shape = node.output_shapes[0]
    spatial = int(node.op[-2])
    in_shape = b.shape(node, 0)
    cin = in_shape[1] if in_shape is not None and len(in_shape) == spatial + 2 else m.in_channels
    cout = out_shape[1] if len(out_shape) == spatial + 2 else m.out_channels
    if len(out_shape) != spatial + 2 or cin != m.in_channels or cout != m.out_channels:
        reason = f"{node.name} runs on an unbatched input or on shapes its module does not declare"
        b.refuse(x, reason)
        return b.produce(node, name, cout, True, reason)
    if x is not None and _total(x) != cin:
        b.refuse(x, f"{node.name} reads {cin} channels, the group layout has {_total(x)}")
        x = None
    stride = any(s > 1 for s in m.stride) and not transpose
    if m.groups == 1:
        if x is not None:
            b.consume(node, x, name, "input")
        return b.produce(node, name, cout, True, downsample=stride)
    if not transpose and m.groups == cin and cout % cin == 0:  # depthwise, channel multiplier cout / cin
        mult = cout // cin
        if x is None:
            reason = f"depthwise conv {node.name} reads channels of no prunable group (a model input)"
            return b.produce(node, name, cin, True, reason, role="channelwise") if mult == 1 else None
        b.consume(node, x, name, "channelwise", mult)
        if stride:
            b.flag_downsample(x)
        return tuple(Segment(s.elem, s.size, s.repeat * mult) for s in x)  # zero weights: zero output
    reason = f"{node.name} is a grouped conv (groups={m.groups}), whose channels cannot be removed one by one"
    b.refuse(x, reason)
    return b.produce(node, name, cout, True, reason)


def linear(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """``linear``: on ``[N, F]`` its input features are a consumer slot and its output features a
    group (listed when something reads it, see ``GroupBuilder.list_linear_groups``). On more dims
    (``[N, T, F]``) the features are the last dim, not dim 1: the groups it reads or makes are
    refused."""
    x = ins[0] if ins else None
    _others(b, node, ins)
    found = b.owner(node, (nn.Linear,), 1)
    if isinstance(found, str):
        b.refuse(x, found)
        return None
    name, m = found
    assert isinstance(m, nn.Linear)  # owner() checked the type
    in_shape = b.shape(node, 0)
    if x is not None:
        if in_shape is None or len(in_shape) != 2:
            b.refuse(x, f"linear {node.name} reads a {len(in_shape or ())}-D tensor and mixes its last dim, "
                        "not the channels")
        elif _total(x) != m.in_features:
            b.refuse(x, f"{node.name} reads {m.in_features} features, the group layout has {_total(x)}")
        else:
            b.consume(node, x, name, "input")
    out_shape = node.output_shapes[0]
    if len(out_shape) != 2 or out_shape[1] != m.out_features:
        reason = (f"linear {node.name} returns a {len(out_shape)}-D tensor {tuple(out_shape)}: its features are "
                  "the last dim, and nncompress prunes linear features only on [N, F] activations")
        layout = b.produce(node, name, m.out_features, False, reason)
        b.refuse(layout, reason)
        return None
    return b.produce(node, name, m.out_features, False)


def batch_norm(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """BatchNorm: channelwise; with its affine parameters zeroed, removed channels are zero."""
    x = ins[0]
    if _others(b, node, ins) or x is None:
        return None
    module = b.modules.get(node.module)
    read = {(r.module, r.param) for r in node.weights}
    if not isinstance(module, _BatchNorm) or read != {(node.module, p) for p, v in
                                                      module.named_parameters(recurse=False) if v is not None}:
        b.refuse(x, f"{node.name} is a batch_norm whose parameters are not those of a BatchNorm module")
        return None
    in_shape = b.shape(node, 0)
    if in_shape != node.output_shapes[0] or _total(x) != module.num_features:
        b.refuse(x, f"{node.name} normalises {module.num_features} channels, the group layout has {_total(x)}")
        return None
    b.consume(node, x, node.module, "channelwise")
    if not module.affine:
        return _nonzero(x, f"{node.name} (a batch_norm without affine parameters)")
    return tuple(replace(s, nonzero="") for s in x)


def unary(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """Elementwise activations, dropout, clone...: the layout passes through."""
    x = ins[0]
    if _others(b, node, ins) or x is None:
        return None
    if node.weights or b.shape(node, 0) != node.output_shapes[0]:
        b.refuse(x, f"{node.name} ({node.op}) reads a parameter or changes the shape")
        return None
    if node.op in rules.HARDTANH:
        module = b.modules.get(node.module)
        keeps_zero = isinstance(module, nn.Hardtanh) and module.min_val <= 0.0 <= module.max_val
        return x if keeps_zero else _nonzero(x, node.name)
    return _nonzero(x, node.name) if node.op in rules.NONZERO_UNARY else x


def spatial(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """Pooling, interpolation, padding: dims 0 and 1 must keep their sizes."""
    x = ins[0]
    if _others(b, node, ins) or x is None:
        return None
    shape, out = b.shape(node, 0), node.output_shapes[0]
    if shape is None or len(shape) < 3 or len(out) != len(shape) or out[:2] != shape[:2]:
        b.refuse(x, f"{node.name} ({node.op}) changes the batch or channel dim ({shape} -> {out})")
        return None
    return x


def reduction(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """``mean``/``sum``/``amax`` over spatial dims: proven from the shapes or refused."""
    x = ins[0]
    if _others(b, node, ins) or x is None:
        return None
    shape, out = b.shape(node, 0), node.output_shapes[0]
    if shape is None or not rules.reduction_keeps_channels(shape, out):
        b.refuse(x, f"{node.name} ({node.op}, {shape} -> {out}) may reduce over the channels")
        return None
    return x


def reshape(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """``flatten``/``view``/``reshape``/``squeeze``: whole channels must stay on dim 1."""
    x = ins[0]
    if _others(b, node, ins) or x is None:
        return None
    shape, out = b.shape(node, 0), node.output_shapes[0]
    factor = rules.reshape_channel_factor(shape, out) if shape is not None else None
    if factor is None:
        b.refuse(x, f"{node.name} ({node.op}, {shape} -> {out}) moves channels off dim 1")
        return None
    return tuple(replace(s, repeat=s.repeat * factor) for s in x)


def binary(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """``add``/``sub``/``mul``/``div``: two groups meet (merge) or one meets a scalar or a tensor
    broadcast over the channels."""
    op, out = node.op.rstrip("_"), node.output_shapes[0]
    mul = op in ("mul", "multiply", "div", "true_divide")
    if len(ins) == 1:  # with a Python number
        x = ins[0]
        if x is None or b.shape(node, 0) != out:
            return None
        return x if mul else _nonzero(x, node.name)
    shapes = [b.shape(node, p) for p in range(len(ins))]
    if len(ins) != 2 or any(lay and (s is None or len(s) != len(out) or s[1] != out[1]) for lay, s in zip(ins, shapes)):
        b.refuse_all(ins, f"{node.name} ({node.op}) broadcasts the channels")
        return None
    if op in ("div", "true_divide") and ins[1]:
        b.refuse_all(ins, f"{node.name} divides by the channels")
        return None
    a, c = ins
    if a and c:
        return b.merge(a, c, f"{node.name} ({node.op}) joins tensors whose channel layouts differ", mul)
    x, other = (a, shapes[1]) if a else (c, shapes[0])
    assert x is not None  # the builder calls handlers only with a group input
    if other is None or rules.broadcast_channels(other, out) != 1:
        b.refuse(x, f"{node.name} ({node.op}) combines the channels with a per-channel tensor outside the group "
                    "(or one whose shape was not captured)")
        return None
    return x if mul else _nonzero(x, node.name)


def concat(b: GroupBuilder, node: OpNode, ins: Ins) -> Layout | None:
    """``torch.cat``: along dim 1 the groups sit side by side; along another dim they merge."""
    out = node.output_shapes[0]
    shapes = [b.shape(node, p) for p in range(len(ins))]
    dim = rules.concat_dim(shapes, out)
    if dim is None:
        b.refuse_all(ins, f"{node.name} ({node.op}) joins along a dim the shapes do not tell")
        return None
    if dim != 1:
        if not all(ins):
            b.refuse_all(ins, f"{node.name} ({node.op}) joins the channels with a tensor of no group")
            return None
        merged: Layout | None = ins[0]
        for layout in ins[1:]:
            assert layout is not None and merged is not None
            merged = b.merge(merged, layout, f"{node.name} ({node.op}) joins tensors whose channel layouts differ")
            if merged is None:
                return None
        return merged
    known = sum(s[1] for s in shapes if s is not None)
    segs: list[Segment] = []
    for layout, shape in zip(ins, shapes):
        segs += layout if layout else [Segment(None, shape[1] if shape is not None else out[1] - known)]
    return tuple(segs)


__all__ = ["batch_norm", "binary", "concat", "conv", "linear", "reduction", "reshape", "spatial",
           "unary"]
