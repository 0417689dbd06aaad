"""The check of each forward's ops against the op sequence capture saw.

Operation points are keyed by op names (``<scope>/<op>_<index>``), and an index counts calls of
``op`` in ``scope`` along the path the forward takes. A forward that takes another path can give a
captured name to another op, so the hook runtime compares every forward of a model that has
operation points with the capture (see ``docs/capture.md``):

* per op, one set lookup: is the name one capture gave (:attr:`ExpectedOps.names`)? Only an op
  whose name capture never gave goes on to :meth:`ExpectedOps.unseen`;
* per forward, one comparison of the forward's call counts with capture's; only when they differ
  does :meth:`ExpectedOps.check_counts` look at the families holding inserted modules.

A family is a ``(scope, op)`` pair: the ops one counter numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Container, Iterable, Mapping
from typing import Any

from torch import nn

from nncompress.errors import GraphMismatchError
from nncompress.graph.capture import CapturedGraph, Site, caller_frame, site_of

Family = tuple[str, str]  # (scope, op): the ops one call counter numbers


class AnyName(Container[str]):
    """The known op names of a runtime without a captured sequence (a layout applied by hand)."""

    def __contains__(self, name: object) -> bool:
        return True


ANY_NAME = AnyName()


def family_of(name: str) -> Family:
    """The ``(scope, op)`` of an op name: ``"Net/Linear[fc]/linear_0"`` -> ``("Net/Linear[fc]", "linear")``."""
    scope, _, op = name.rpartition("_")[0].rpartition("/")
    return scope, op


def point_families(op_names: Iterable[str]) -> dict[Family, list[str]]:
    """The names of the ops that hold inserted modules, by family.

    :param op_names: the op names of the operation points.
    :return: ``(scope, op)`` -> op names.
    """
    families: dict[Family, list[str]] = {}
    for name in op_names:
        families.setdefault(family_of(name), []).append(name)
    return families


class ExpectedOps:
    """The op sequence of one capture, which every forward of a model with operation points is checked against.

    :param graph: the capture the inserted modules' points were chosen from.
    """

    def __init__(self, graph: CapturedGraph) -> None:
        self.counts: dict[Family, int] = dict(graph.op_counts)  # calls per family
        self.sites: dict[Family, frozenset[Site]] = dict(graph.op_sites)  # lines of code per family
        self.names: frozenset[str] = frozenset(
            f"{s}/{op}_{i}" for (s, op), n in graph.op_counts.items() for i in range(n)
        )
        self.warned = False  # the one warning about an unseen layer was given

    def unseen(self, name: str, points: Mapping[Family, list[str]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """An op whose name capture never gave is about to run: refuse if it may shift a point.

        Called from the hook mode's ``__torch_function__`` only (it names the model code that
        called the op from the stack).

        The index is past the ops capture counted. If an extra call ran before some of them, the
        op getting this index is one capture saw (same line of code) pushed back: the points of
        the family may have acted on other ops. A new line (a loss computed after the outputs)
        shifted nothing, and the op runs uncompressed; a layer (an op reading a parameter) gets
        one warning per model.

        :param name: the op's name in this forward.
        :param points: the op names holding inserted modules, by family (:func:`point_families`).
        :param args: the op's positional arguments.
        :param kwargs: its keyword arguments.
        :raises GraphMismatchError: if the op's family holds a point and capture saw its line.
        """
        family = family_of(name)
        scope, op = family
        names = points.get(family)
        frame = caller_frame(1)
        if names and site_of(frame) in self.sites.get(family, ()):
            raise GraphMismatchError(
                f"this forward ran op {name} ({frame.f_code.co_filename}:{frame.f_lineno}), but capture counted "
                f"{self.counts.get(family, 0)} '{op}' call(s) in {scope}: an op capture did not see ran before it, "
                f"shifting the indices that name inserted modules ({sorted(names)[:3]}), so they could act on other "
                "ops. Capture runs the forward once in eval mode on the example input: give an example_input (or "
                "input_info) that takes this branch, or move the data-dependent op into its own sub-module"
            )
        # Only a layer matters to the user (it runs with its float weight); ops of hooks (statistics
        # collectors) and of checkpointing's bookkeeping are unseen too, and would only add noise.
        if not self.warned and any(isinstance(a, nn.Parameter) for a in (*args, *kwargs.values())):
            self.warned = True
            warnings.warn(
                f"op {name} did not run when the model was captured (in eval mode, on the example input), so "
                "nothing is inserted there and it runs uncompressed (a training-only branch, or a branch the "
                "example input did not take). No inserted module is affected. This warning is shown once per model",
                UserWarning, stacklevel=3,
            )

    def check_counts(self, counters: Mapping[Family, int], points: Mapping[Family, list[str]]) -> None:
        """After a forward whose call counts differ from capture's: refuse if a family holding a
        point ran fewer ops than capture saw (a captured branch was skipped).

        :param counters: the forward's calls per family.
        :param points: the op names holding inserted modules, by family.
        :raises GraphMismatchError: naming the family and its points.
        """
        for family, names in points.items():
            ran, expected = counters.get(family, 0), self.counts.get(family, 0)
            if ran < expected:
                scope, op = family
                raise GraphMismatchError(
                    f"this forward ran {ran} '{op}' call(s) in {scope}, capture counted {expected}: a branch "
                    f"taken at capture was skipped, so inserted modules at {sorted(names)[:3]} acted on other "
                    "ops or did not run. Capture runs the forward once in eval mode on the example input: give "
                    "an example_input (or input_info) that takes the branch this forward takes, or move the "
                    "data-dependent op into its own sub-module"
                )

