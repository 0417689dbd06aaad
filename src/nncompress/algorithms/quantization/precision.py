"""Mixed precision: ``initializer.precision`` typed, quantizer ids, manual bits, bit complexity.

NNCF 2.x (``nncf/torch/quantization/precision_init/``) picks one bit width per quantizer before
range initialisation, either from the config (``"type": "manual"``, ``bitwidth_per_scope``) or
by HAWQ (:mod:`.hawq`). Quantizers are named as NNCF named them (``QuantizerId``):

* a weight quantizer: ``<op>|WEIGHT``, the op reading the weight
  (``ResNet/Conv2d[conv1]/conv2d_0|WEIGHT``);
* an activation quantizer on an op's output: ``<op>|OUTPUT``; at an op's input port ``p``:
  ``<op>|INPUT<p>``; on model input ``i``: also ``/nncf_model_input_<i>|OUTPUT``.

NNCF moved activation quantizers up through ops that do not change values (max pooling,
flatten, reshape, dropout), so an activation quantizer here also answers to the ``|OUTPUT`` of
every op above it along such a chain (a ``Linear`` after ``flatten`` after average pooling is
``.../adaptive_avg_pool2d_0|OUTPUT`` in NNCF's configs). NNCF's spellings (``NNCFConv2d``,
``__add___0``, ``relu__0``) are accepted, as everywhere scopes are matched.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

from nncompress.errors import ScopeMatchError
from nncompress.graph.capture import CapturedGraph
from nncompress.graph.layout import TargetType
from nncompress.graph.scopes import REGEX_PREFIX, compile_scope_regex, normalize_scope_pattern, scope_matches

from ..selection import CaptureReport
from .params import PrecisionParams
from .placement import QuantizerPlacement, weight_output_axis

REFERENCE_BITS = 8
"""The compression ratio is the bit complexity of an all-INT8 model over the mixed one's."""

_VALUE_PRESERVING = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "flatten", "view", "reshape", "dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout",
    "squeeze", "unsqueeze", "contiguous", "cat",
})  # fmt: skip
_LEGACY_PREFIX = re.compile(r"^(?:InsertionType|TargetType)\.(\w+)\s+")
_LEGACY_KIND = {
    "NNCF_MODULE_PRE_OP": "WEIGHT", "OPERATION_WITH_WEIGHTS": "WEIGHT", "OPERATOR_POST_HOOK": "OUTPUT",
    "POST_LAYER_OPERATION": "OUTPUT", "OPERATOR_PRE_HOOK": "INPUT", "PRE_LAYER_OPERATION": "INPUT",
}  # fmt: skip
_INPLACE_RELU = re.compile(r"relu__(?=\d)")  # NNCF's name of an in-place ReLU call
_SUFFIX = re.compile(r"\|(WEIGHT|OUTPUT|INPUT\d*)$")


# -- quantizer ids -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizerIds:
    """How one quantizer is named: its NNCF-style id, and the ids NNCF may have used for it."""

    id: str
    aliases: tuple[str, ...] = ()


def quantizer_ids(graph: CapturedGraph, placements: Sequence[QuantizerPlacement]) -> list[QuantizerIds]:
    """The NNCF 2.x ``QuantizerId`` of every placement (see the module docstring).

    :param graph: the captured graph.
    :param placements: the quantizers, in placement order.
    :return: one entry per placement.
    """
    out = []
    for p in placements:
        if p.point.target_type is TargetType.WEIGHT:
            out.append(QuantizerIds(f"{p.consumers[0]}|WEIGHT"))
        elif p.point.target_type is TargetType.OPERATION_OUTPUT:
            out.append(QuantizerIds(f"{p.point.target}|OUTPUT", _upstream_ids(graph, p.point.target)))
        else:
            node = graph.nodes[p.point.target]
            producer = node.inputs[p.point.port] if p.point.port < len(node.inputs) else None
            aliases = (_output_id(producer), *_upstream_ids(graph, producer)) if producer else ()
            out.append(QuantizerIds(f"{p.point.target}|INPUT{p.point.port}", aliases))
    return out


def _output_id(producer: str) -> str:
    if producer.startswith("@input:"):
        return f"/nncf_model_input_{producer[len('@input:'):]}|OUTPUT"
    return f"{producer}|OUTPUT"


def _upstream_ids(graph: CapturedGraph, name: str | None) -> tuple[str, ...]:
    """``|OUTPUT`` ids of the ops above ``name`` along value-preserving ops: single-input ones
    (their first input) and concatenation (every input: NNCF quantized each branch of a ``cat``)."""
    ids: list[str] = []
    stack = [name]
    while stack:
        node = graph.nodes.get(stack.pop() or "")
        if node is None or node.op not in _VALUE_PRESERVING:
            continue
        producers = node.inputs if node.op == "cat" else node.inputs[:1]
        for producer in producers:
            if producer:
                ids.append(_output_id(producer))
                stack.append(producer)
    return tuple(ids)


def _split_scope(scope: str) -> tuple[str, str | None]:
    """``(name, kind)``: NNCF's legacy ``TargetType.X `` prefix and ``|WEIGHT`` suffix removed."""
    kind = None
    m = _LEGACY_PREFIX.match(scope)
    if m:
        kind = _LEGACY_KIND.get(m.group(1))
        scope = scope[m.end():]
    m = _SUFFIX.search(scope)
    if m:
        kind = m.group(1)
        scope = scope[: m.start()]
    return scope, kind


def _id_matches(qid: str, name: str, kind: str | None) -> bool:
    op, _, suffix = qid.rpartition("|")
    if kind is not None and suffix != kind and not (kind == "INPUT" and suffix.startswith("INPUT")):
        return False
    return scope_matches(op, name)


def match_quantizers(scope: str, ids: Sequence[QuantizerIds]) -> list[int]:
    """Indices of the quantizers a ``bitwidth_per_scope`` scope names.

    ``{re}<regex>``: every quantizer with an id the regex finds (``re.search``; escape the ``|``
    of a suffix as ``\\|``). Otherwise a name with an optional ``|WEIGHT`` / ``|OUTPUT`` /
    ``|INPUT<p>`` suffix: the quantizers whose op equals it or lies in it as a module scope; a
    name no quantizer's own id matches is looked up among the NNCF aliases, then, as NNCF 2.x
    did, as a part of an id (``Conv2d[conv1]/conv2d_0|WEIGHT`` without the model's name).

    :param scope: the entry.
    :param ids: the quantizers' ids.
    :return: the matching indices (possibly empty).
    """
    if scope.startswith(REGEX_PREFIX):
        regex = compile_scope_regex(scope[len(REGEX_PREFIX):])
        return [i for i, q in enumerate(ids) if any(regex.search(x) for x in (q.id, *q.aliases))]
    name, kind = _split_scope(scope)
    direct = [i for i, q in enumerate(ids) if _id_matches(q.id, name, kind)]
    if direct:
        return direct
    aliased = [i for i, q in enumerate(ids) if any(_id_matches(a, name, kind) for a in q.aliases)]
    if aliased:
        return aliased
    # NNCF 2.x looked the scope up as a substring of its quantizer ids
    part = _INPLACE_RELU.sub("relu_", normalize_scope_pattern(scope))
    return [i for i, q in enumerate(ids) if any(part in x for x in (q.id, *q.aliases))]


def manual_bits(params: PrecisionParams, ids: Sequence[QuantizerIds]) -> dict[int, int]:
    """The bits ``bitwidth_per_scope`` sets, by quantizer index (a later entry wins).

    An entry found only as a part of several ids sets them all, with a warning (NNCF 2.x set the
    first one it found).

    :raises ScopeMatchError: for an entry that names no quantizer, with its JSON path and close ids.
    """
    chosen: dict[int, int] = {}
    all_ids = [x for q in ids for x in (q.id, *q.aliases)]
    for i, (bits, scope) in enumerate(params.bitwidth_per_scope):
        hits = match_quantizers(scope, ids)
        if not hits:
            close = difflib.get_close_matches(_split_scope(scope)[0] + "|" + (_split_scope(scope)[1] or "WEIGHT"),
                                              all_ids, n=3, cutoff=0.5)
            hint = f"close quantizer ids: {close}" if close else f"quantizer ids look like {all_ids[:2]}"
            raise ScopeMatchError(
                f"{params.json_path}.bitwidth_per_scope[{i}][1]: {scope!r} matches no quantizer of the model; "
                f"{hint}. Name a quantizer as '<op>|WEIGHT', '<op>|OUTPUT' or '<op>|INPUT<port>', or use "
                '"{re}<regex>"; the capture report lists the ops and which got quantizers'
            )
        if len(hits) > 1 and not scope.startswith(REGEX_PREFIX) and not _named(scope, ids):
            warnings.warn(f"{params.json_path}.bitwidth_per_scope[{i}][1]: {scope!r} is a part of {len(hits)} quantizer "
                          f"ids, all set to {bits} bits (e.g. {ids[hits[0]].id!r}, {ids[hits[1]].id!r}); NNCF 2.x set "
                          "only the first it found. Name one quantizer by its full id to set one", stacklevel=2)
        for h in hits:
            chosen[h] = bits
    return chosen


def _named(scope: str, ids: Sequence[QuantizerIds]) -> bool:
    """Whether ``scope`` names a quantizer or a module scope directly (not only as a part of ids)."""
    name, kind = _split_scope(scope)
    return any(_id_matches(x, name, kind) for q in ids for x in (q.id, *q.aliases))


# -- groups, activation bits, bit complexity -----------------------------------------------------


def adjacency_groups(placements: Sequence[QuantizerPlacement]) -> list[int]:
    """A group number per quantizer: quantizers feeding the same ops, transitively, share one.

    A weight quantizer belongs with the op reading the weight, an activation quantizer with
    every op it feeds (NNCF 2.x's groups of adjacent quantizers).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, p in enumerate(placements):
        for op in p.consumers:
            parent[find(f"#{i}")] = find(op)
    roots: dict[str, int] = {}
    return [roots.setdefault(find(f"#{i}"), len(roots)) for i in range(len(placements))]


def tie_activation_bits(placements: Sequence[QuantizerPlacement], bits: list[int],
                        groups: Sequence[int] | None = None) -> list[int]:
    """Activation bits from the weights next to them, as NNCF 2.x without a hardware config.

    Each activation quantizer takes the fewest bits among the weight quantizers of its group
    (:func:`adjacency_groups`); one in a group without weight quantizers keeps its bits. (In
    ``strict`` mode HAWQ only considers candidates whose grouped weights agree, so the group
    then has one width.)

    :param placements: the quantizers.
    :param bits: the bits of every quantizer (weights' chosen, activations' configured).
    :param groups: :func:`adjacency_groups` of ``placements``, when the caller has it already.
    :return: the bits with the activations' replaced.
    """
    if groups is None:
        groups = adjacency_groups(placements)
    fewest: dict[int, int] = {}
    for g, p, b in zip(groups, placements, bits):
        if p.group == "weights":
            fewest[g] = min(b, fewest.get(g, b))
    return [fewest.get(g, b) if p.group == "activations" else b for g, p, b in zip(groups, placements, bits)]


def weight_macs(graph: CapturedGraph, placement: QuantizerPlacement) -> int:
    """Multiply-accumulates of the op reading a weight, for one forward of the example input.

    Output elements times weight elements per output channel (conv, linear, matmul); output
    elements for an embedding lookup.
    """
    node = graph.nodes[placement.consumers[0]]
    out = 1
    for d in node.output_shapes[0] if node.output_shapes else ():
        out *= int(d)
    w = node.weight
    if w is None or node.op == "embedding":
        return out
    numel = 1
    for d in w.shape:
        numel *= int(d)
    return out * numel // max(int(w.shape[weight_output_axis(node, w.port, len(w.shape))]), 1)


def compression_ratio(macs: Sequence[int], weight_bits: Sequence[int], input_bits: Sequence[int | None]) -> float:
    """NNCF 2.x's HAWQ compression ratio: bit complexity of all-INT8 over the mixed model's.

    ``ratio = sum_i 8 * MACs_i / sum_i max(w_i, a_i) * MACs_i``, over the quantized weights ``i``,
    ``w_i`` their bits and ``a_i`` those of the activation quantizer feeding their op (if any).

    :param macs: per weight quantizer.
    :param weight_bits: per weight quantizer.
    :param input_bits: per weight quantizer, the bits of its op's input quantizer or ``None``.
    :return: the ratio (1.0 for no work at all).
    """
    mixed = sum(m * max(w, a or 0) for m, w, a in zip(macs, weight_bits, input_bits))
    total = sum(macs)
    return REFERENCE_BITS * total / mixed if mixed else 1.0


def input_quantizers(placements: Sequence[QuantizerPlacement], widx: Sequence[int]) -> list[list[int]]:
    """For each weight quantizer (indices ``widx``), the activation quantizers feeding its op."""
    by_op: dict[str, list[int]] = {}
    for a, p in enumerate(placements):
        if p.group == "activations":
            for op in p.consumers:
                by_op.setdefault(op, []).append(a)
    return [by_op.get(placements[i].consumers[0], []) for i in widx]


def ratio_of(graph: CapturedGraph, placements: Sequence[QuantizerPlacement]) -> float:
    """:func:`compression_ratio` of the placements at their bits."""
    widx = [i for i, p in enumerate(placements) if p.group == "weights"]
    feeding = input_quantizers(placements, widx)
    return compression_ratio([weight_macs(graph, placements[i]) for i in widx],
                             [placements[i].params.bits for i in widx],
                             [max((placements[a].params.bits for a in f), default=None) for f in feeding])


def report_bits(report: CaptureReport, graph: CapturedGraph, placements: Sequence[QuantizerPlacement]) -> None:
    """Rewrite the ``"weight, 8 bit"`` / ``"activation, 8 bit"`` reasons of the capture report
    with the bits mixed precision chose."""
    bits: dict[tuple[str, str], int] = {}
    for p in placements:
        if p.point.target_type is TargetType.WEIGHT:
            bits[(p.consumers[0], f"{p.point.target}.{p.point.param}".lstrip("."))] = p.params.bits
        else:
            producer = p.point.target
            if p.point.target_type is TargetType.OPERATION_INPUT:
                producer = graph.nodes[p.point.target].inputs[p.point.port] or ""
            bits[(p.consumers[0], f"from {producer}")] = p.params.bits
    for i, row in enumerate(report.rows):
        kind, _, _ = row.reason.partition(", ")
        key = (row.op, row.weight if kind == "weight" else "from " + row.weight.rpartition(" from ")[2])
        if row.compressed and kind in ("weight", "activation") and key in bits:
            report.rows[i] = replace(row, reason=f"{kind}, {bits[key]} bit")
