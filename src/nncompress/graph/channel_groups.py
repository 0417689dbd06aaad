"""Channel dependency groups: which output channels of which convs and linears must be pruned together.

Removing output channel ``c`` of a conv removes row ``c`` of its weight and bias, the BatchNorm
and depthwise-conv channel ``c`` that follow it, and input channel ``c`` of every conv or linear
that reads it. Where two conv outputs meet in an elementwise op (a residual ``add``, a
squeeze-excitation ``mul``) their channels must go together: they form one
:class:`ChannelGroup`. ``torch.cat`` along the channels puts groups side by side (a consumer
sees each at an offset); a flatten into a linear spreads each channel over ``H*W`` features
(``repeat``). A linear on ``[N, F]`` activations is a producer like a conv (its features are
dim 1); its group is listed when another op reads its features (an MLP head), a classifier whose
features only reach the model output makes none. On ``[N, T, F]`` the features are the last dim,
so such a linear's group is listed as unprunable, saying so.

:func:`channel_groups` follows every captured conv and linear output through the graph. A group is prunable
only if the *defining property* holds for it: zeroing its removed channels in every ``output``
and ``channelwise`` slot (weight rows, bias, BatchNorm weight and bias) gives the same model
output as removing them with :func:`nncompress.torch.channel_surgery.remove_channels`. Anything
that cannot be proven from the captured shapes (attention, a reshape other than a flatten into a
linear, grouped convs, channels reaching a model output, ops whose channel semantics are unknown,
an op mapping zero to non-zero before a consumer) makes the group unprunable with a reason.

Example::

    graph = capture(model, (torch.randn(1, 3, 32, 32),))
    for g in channel_groups(graph, model):
        print(g.index, g.channels, g.prunable or g.reason, [s.module for s in g.producers])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from torch import nn

from nncompress.graph import channel_rules as rules
from nncompress.graph.capture import CapturedGraph, OpNode

ROLES = ("output", "channelwise", "input")


@dataclass(frozen=True)
class ChannelSlot:
    """Where a group's channels sit in one module's parameters.

    :param op: captured op name (``OpNode.name``) of the conv / linear / batch_norm op.
    :param module: qualified name of the module owning the parameters (``layer1.0.conv1``).
    :param role: ``"output"``: the op's output channels (conv weight dim 0, conv_transpose weight
        dim 1, linear weight dim 0, and the bias); ``"channelwise"``: per-channel parameters that
        follow the group (BatchNorm weight, bias and running statistics; a depthwise conv's
        weight dim 0 and bias); ``"input"``: the op's input channels (conv weight dim 1,
        conv_transpose weight dim 0, linear weight dim 1).
    :param offset: first feature of the group along that dim (non-zero after ``torch.cat``).
    :param repeat: features per channel along that dim (``H*W`` for a linear after a flatten of
        ``C x H x W``; the channel multiplier for a depthwise conv). Channel ``c`` of the group
        occupies features ``offset + c*repeat`` to ``offset + (c+1)*repeat - 1``.
    """

    op: str
    module: str
    role: str
    offset: int = 0
    repeat: int = 1


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together (one mask).

    :param index: the group's number (its position in :func:`channel_groups`'s list).
    :param channels: number of channels in the group.
    :param slots: every place the channels sit in a module's parameters.
    :param prunable: whether removing channels keeps the model's function (see the module doc).
    :param reason: why the group is not prunable (shown to the user); ``""`` if prunable.
    :param first_conv: a producer conv or linear is one of the first: a model input reaches it
        through no other conv or linear (NNCF's ``prune_first_conv``, whose first prunable nodes
        include linears).
    :param downsample: a conv of the group (producer or depthwise) has a stride > 1; transposed
        convs never count (NNCF's ``prune_downsample_convs``, which checked every conv of a group).
    """

    index: int
    channels: int
    slots: list[ChannelSlot]
    prunable: bool = True
    reason: str = ""
    first_conv: bool = False
    downsample: bool = False

    @property
    def producers(self) -> list[ChannelSlot]:
        """The slots whose op computes the channels (role ``output``)."""
        return [s for s in self.slots if s.role == "output"]

    @property
    def channelwise(self) -> list[ChannelSlot]:
        """The per-channel slots (BatchNorm, depthwise conv)."""
        return [s for s in self.slots if s.role == "channelwise"]

    @property
    def consumers(self) -> list[ChannelSlot]:
        """The slots whose op reads the channels (role ``input``)."""
        return [s for s in self.slots if s.role == "input"]


@dataclass(frozen=True)
class Segment:
    """A run of one group's channels along dim 1 of a tensor (``elem`` None: channels of no group)."""

    elem: int | None
    size: int
    repeat: int = 1
    nonzero: str = ""  # the op after which removed (zeroed) channels are no longer zero


Layout = tuple[Segment, ...]
Handler = Callable[["GroupBuilder", OpNode, "list[Layout | None]"], "Layout | None"]


@dataclass
class _Elem:
    """One group in the making; union-find merges elements into their root."""

    channels: int
    slots: list[ChannelSlot] = field(default_factory=list)
    reason: str = ""
    first_conv: bool = False
    downsample: bool = False
    listed: bool = False  # a conv computes or reads it, or it is a linear group that is read or refused


def channel_groups(graph: CapturedGraph, model: nn.Module) -> list[ChannelGroup]:
    """Every group of the captured conv and linear outputs, prunable or not (with a reason).

    :param graph: the model's capture (:func:`nncompress.graph.capture.capture`).
    :param model: the captured model (its modules' types and attributes are read, not changed).
    :return: the groups in the order their first conv ran.
    """
    builder = GroupBuilder(graph, model)
    for node in graph:
        builder.visit(node)
    builder.list_linear_groups()
    for name in graph.outputs:
        layout = builder.layouts.get(name)
        if layout:
            builder.refuse(layout, f"its channels reach a model output (through {name})")
    _refuse_indexed_writes(builder, graph)
    return builder.groups()


def _refuse_indexed_writes(builder: GroupBuilder, graph: CapturedGraph) -> None:
    """``x[idx] = v`` returns nothing, so capture counts it without knowing which tensor it wrote:
    every group tensor produced or read by an op in that module scope (or below) is refused."""
    scopes = sorted({scope for scope, op in graph.op_counts if op == "setitem"})
    if not scopes:
        return

    def inside(scope: str) -> str | None:
        return next((s for s in scopes if scope == s or scope.startswith(s + "/")), None)

    for node in graph:
        scope = inside(node.scope)
        if scope is None:
            continue
        reason = f"{scope} writes into a tensor by index (setitem); nncompress cannot tell which channels"
        builder.refuse(builder.layouts.get(node.name), reason)
        for producer in node.inputs:
            builder.refuse(builder.layouts.get(producer) if producer else None, reason)


class GroupBuilder:
    """Follows channel layouts through the ops in execution order, merging groups (union-find)."""

    def __init__(self, graph: CapturedGraph, model: nn.Module) -> None:
        self.graph = graph
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.readers = graph.weight_readers()
        self.parent: list[int] = []
        self.elems: list[_Elem] = []
        self.layouts: dict[str, Layout] = {}  # op name -> layout of its (single) output's dim 1
        self.module_out: dict[str, int] = {}  # module -> element of its output channels
        self.module_in: dict[tuple[str, str], Layout] = {}  # (module, role) -> layout it reads
        self.near_input: set[str] = set()  # ops a model input reaches through no conv or linear
        self.alias_root: dict[str, str] = {}  # op -> the op whose output's storage it shares (views, in-place)
        self.viewed: set[str] = set()  # roots with a second tensor on their storage (a view)
        from nncompress.graph import channel_handlers as h  # (it imports this module)

        self.handlers: dict[str, Handler] = {}
        table: list[tuple[frozenset[str], Handler]] = [
            (rules.CONVS | rules.CONV_TRANSPOSES, h.conv), (frozenset({"linear"}), h.linear),
            (frozenset({"batch_norm"}), h.batch_norm),
            (rules.ZERO_PRESERVING_UNARY | rules.NONZERO_UNARY | rules.HARDTANH, h.unary),
            (rules.SPATIAL, h.spatial), (rules.REDUCTIONS, h.reduction), (rules.RESHAPES, h.reshape),
            (rules.BINARY, h.binary), (rules.CONCAT, h.concat)]
        for ops, handler in table:
            self.handlers.update(dict.fromkeys(ops, handler))
        self.sources = {h.conv, h.linear}  # handlers that run without a group input
        self.stops = rules.CONVS | rules.CONV_TRANSPOSES | {"linear"}

    def from_input(self, producer: str | None) -> bool:
        """Whether a tensor comes from a model input through no conv or linear."""
        return producer is not None and (producer.startswith("@input") or producer in self.near_input)

    # -- union-find over group elements --------------------------------------------------------

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def new_elem(self, channels: int) -> int:
        self.parent.append(len(self.elems))
        self.elems.append(_Elem(channels))
        return len(self.elems) - 1

    def union(self, a: int, b: int) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra == rb:
            return
        ea, eb = self.elems[ra], self.elems[rb]
        self.parent[rb] = ra
        ea.slots += eb.slots
        ea.reason = ea.reason or eb.reason
        ea.first_conv |= eb.first_conv
        ea.downsample |= eb.downsample
        ea.listed |= eb.listed

    def refuse(self, layout: Layout | None, reason: str) -> None:
        """Make every group in the layout unprunable (the first reason stays)."""
        for seg in layout or ():
            if seg.elem is not None:
                elem = self.elems[self.find(seg.elem)]
                elem.reason = elem.reason or reason

    def flag_downsample(self, layout: Layout) -> None:
        """Mark the groups of a layout as read by a strided depthwise conv."""
        for seg in layout:
            if seg.elem is not None:
                self.elems[self.find(seg.elem)].downsample = True

    def refuse_all(self, ins: Sequence[Layout | None], reason: str) -> None:
        for layout in ins:
            self.refuse(layout, reason)

    def add_slots(self, layout: Layout, op: str, module: str, role: str, scale: int = 1) -> None:
        offset = 0
        for seg in layout:
            if seg.elem is not None:
                slot = ChannelSlot(op, module, role, offset * scale, seg.repeat * scale)
                self.elems[self.find(seg.elem)].slots.append(slot)
            offset += seg.size * seg.repeat

    def merge(self, a: Layout, b: Layout, reason: str, mul: bool = False) -> Layout | None:
        """Tie two layouts channel by channel (elementwise op); ``None`` if they do not line up."""
        if len(a) != len(b) or any(
            sa.size != sb.size or sa.repeat != sb.repeat or (sa.elem is None) != (sb.elem is None)
            for sa, sb in zip(a, b)
        ):
            self.refuse_all([a, b], reason)
            return None
        out = []
        for sa, sb in zip(a, b):
            if sa.elem is not None and sb.elem is not None:
                self.union(sa.elem, sb.elem)
            # a product is zero where either factor is; a sum only where both are
            nonzero = (sa.nonzero and sb.nonzero) if mul else (sa.nonzero or sb.nonzero)
            out.append(replace(sa, nonzero=nonzero))
        return tuple(out)

    # -- walking the graph -----------------------------------------------------------------------

    def visit(self, node: OpNode) -> None:
        if node.op not in self.stops and any(self.from_input(p) for p in node.inputs):
            self.near_input.add(node.name)
        ins = [self.layouts.get(p) if p is not None else None for p in node.inputs]
        handler = self.handlers.get(node.op)
        if handler is None:
            self.refuse_all(ins, f"its channels are read by {node.name}, an op ({node.op}) whose effect on "
                                 "channels nncompress does not know")
            return
        if not any(ins) and handler not in self.sources:
            return
        out = handler(self, node, ins)
        self.check_aliasing(node, ins, out)
        if out is not None and len(node.output_shapes) == 1 and any(s.elem is not None for s in out):
            self.layouts[node.name] = out

    def check_aliasing(self, node: OpNode, ins: Sequence[Layout | None], out: Layout | None) -> None:
        """Refuse groups that an in-place op makes non-zero through a view: the capture names
        tensors by the op that made them, so another tensor on the same storage (``y.view(...)
        .add_(1)`` changes ``y``) would still look zero to the ops that read it."""
        src = node.inputs[0] if node.inputs else None
        view = node.op in rules.RESHAPES or node.op in rules.ALIASING_UNARY
        if src is None or not (view or node.op.endswith("_")):
            return
        root = self.alias_root.get(src, src)
        self.alias_root[node.name] = root
        if view:
            self.viewed.add(root)
        x = ins[0]
        if node.op.endswith("_") and root in self.viewed and x and out and any(
                so.nonzero and not si.nonzero for si, so in zip(x, out)):
            self.refuse(x, f"{node.name} ({node.op}) writes non-zero values into the channels in place through a "
                           "view, which the ops reading the other view do not see")

    def shape(self, node: OpNode, port: int) -> tuple[int, ...] | None:
        """Shape of the tensor at a port: a single-output op's result or a parameter read there."""
        read = next((w for w in node.weights if w.port == port), None)
        if read is not None:
            return read.shape
        producer = node.inputs[port]
        src = self.graph.nodes.get(producer) if producer is not None else None
        return src.output_shapes[0] if src is not None and len(src.output_shapes) == 1 else None

    def consume(self, node: OpNode, x: Layout, module: str, role: str, scale: int = 1) -> None:
        """Record that ``module`` reads layout ``x`` in ``role`` (merging with an earlier call)."""
        if role == "input":
            for seg in x:
                if seg.nonzero:
                    self.refuse((seg,), f"{seg.nonzero} turns removed (zero) channels into non-zero values "
                                        f"that {node.name} reads")
        key = (module, role)
        if key in self.module_in:
            self.merge(self.module_in[key], x, f"{module} is called on inputs whose channels differ")
        else:
            self.module_in[key] = x
            self.add_slots(x, node.name, module, role, scale)

    def produce(self, node: OpNode, module: str, channels: int, conv: bool, reason: str = "",
                role: str = "output", downsample: bool = False) -> Layout:
        """The layout of a conv or linear output: one element per module (a module called twice
        computes the same output channels)."""
        e = self.module_out.get(module)
        if e is None:
            e = self.new_elem(channels)
            self.module_out[module] = e
            self.elems[e].slots.append(ChannelSlot(node.name, module, role))
        elem = self.elems[self.find(e)]
        elem.listed |= conv
        elem.reason = elem.reason or reason
        elem.first_conv |= self.from_input(node.inputs[0] if node.inputs else None)
        elem.downsample |= downsample
        return (Segment(e, channels),)

    def owner(self, node: OpNode, types: tuple[type[nn.Module], ...], weight_port: int | None) -> tuple[str, nn.Module] | str:
        """The module whose ``weight`` (and ``bias``) the op reads, or why there is none that fits."""
        w = next((r for r in node.weights if r.param == "weight"), None)
        name = w.module if w is not None else node.module
        module = self.modules.get(name)
        if not isinstance(module, types):
            return f"{node.name} does not read the weight of a {'/'.join(t.__name__ for t in types)} module"
        read = {(r.module, r.param) for r in node.weights}
        own = {(name, p) for p, v in module.named_parameters(recurse=False) if v is not None}
        if read != own or (weight_port is not None and (w is None or w.port != weight_port)):
            return f"{node.name} reads parameters other than exactly {name}'s weight and bias"
        if any(self.readers.get(f"{n}.{p}", {n}) != {n} for n, p in own):
            return f"a parameter of {name} is also read by another module"
        return name, module

    def list_linear_groups(self) -> None:
        """Mark for listing the groups of linears (no conv) that something reads or that a handler
        already refused: a linear whose output only reaches a model output (a classifier) is left
        out, as it never was a group."""
        for e in range(len(self.elems)):
            info = self.elems[self.find(e)]
            if info.reason or any(s.role != "output" for s in info.slots):
                info.listed = True

    def groups(self) -> list[ChannelGroup]:
        out: list[ChannelGroup] = []
        for e in range(len(self.elems)):
            info = self.elems[e]
            if self.find(e) != e or not info.listed:
                continue
            out.append(ChannelGroup(len(out), info.channels, list(info.slots), not info.reason, info.reason,
                                    info.first_conv, info.downsample))
        return out
