"""Target points, insertion commands and the transformation layout.

An algorithm never edits the model itself: it returns a :class:`TransformationLayout`, a list
of "insert this module at that point" commands. Points are:

* ``OPERATION_INPUT``: before input port ``port`` of an operation (by its stable name);
* ``OPERATION_OUTPUT``: after an operation's output;
* ``WEIGHT``: on a module's parameter each time an operation reads it.

Commands at the same point run in priority order (pruning, then sparsity, then quantization),
so that e.g. a sparsity mask is applied before the weight quantizer sees the weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from torch import nn

from nncompress.errors import InvalidArgumentError


class TargetType(str, Enum):
    """Where an inserted module acts."""

    OPERATION_INPUT = "operation_input"
    OPERATION_OUTPUT = "operation_output"
    WEIGHT = "weight"


class Priority(IntEnum):
    """Order of inserted modules at one point: lower runs first (closer to the weight)."""

    PRUNING = 0
    SPARSIFICATION = 1
    SMOOTHING = 2
    QUANTIZATION = 3


@dataclass(frozen=True)
class TargetPoint:
    """A place in the model where a module can be inserted.

    :param target_type: which kind of point.
    :param target: the operation name (input/output points) or the module's qualified name
        (weight points).
    :param port: the input port, for ``OPERATION_INPUT``.
    :param param: the parameter name, for ``WEIGHT``.
    """

    target_type: TargetType
    target: str
    port: int = 0
    param: str = "weight"

    @property
    def key(self) -> str:
        """A stable, dot-free identifier, used as the inserted module's name in ``state_dict``."""
        if self.target_type is TargetType.WEIGHT:
            qualified = f"{self.target}.{self.param}" if self.target else self.param
            return "weight:" + qualified.replace(".", "/")
        if self.target_type is TargetType.OPERATION_INPUT:
            return f"input{self.port}:{self.target}"
        return f"output:{self.target}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"type": self.target_type.value, "target": self.target, "port": self.port, "param": self.param}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetPoint:
        """Inverse of :meth:`to_dict`."""
        return cls(TargetType(d["type"]), d["target"], int(d.get("port", 0)), d.get("param", "weight"))


@dataclass
class InsertionCommand:
    """Insert ``module`` at ``point``.

    :param point: where.
    :param module: the module; for weight points it maps the weight to the weight used, for
        operation points it maps the tensor.
    :param group: the algorithm name; inserted modules are stored under
        ``nncompress.<group>.<point key>`` in the model's ``state_dict``.
    :param priority: order among modules at the same point.
    :param owner_only: for weight points: the capture saw the weight read only by ops of its
        owning module, so the runtime may swap the transformed weight in around that module's
        forward instead of intercepting every op (faster; same result).
    """

    point: TargetPoint
    module: nn.Module
    group: str
    priority: int = Priority.QUANTIZATION
    owner_only: bool = False


@dataclass
class TransformationLayout:
    """An ordered set of insertion commands, possibly from several algorithms."""

    commands: list[InsertionCommand] = field(default_factory=list)

    def register(self, command: InsertionCommand) -> None:
        """Add a command; a second module of the same group at the same point is an error."""
        for c in self.commands:
            if c.group == command.group and c.point == command.point:
                raise InvalidArgumentError(
                    f"{command.group} inserts two modules at {command.point.key}; one per algorithm is allowed"
                )
        self.commands.append(command)

    def merge(self, other: TransformationLayout) -> TransformationLayout:
        """Add all commands of another layout (e.g. of another algorithm) to this one.

        :return: ``self``.
        """
        for c in other.commands:
            self.register(c)
        return self

    def __len__(self) -> int:
        return len(self.commands)
