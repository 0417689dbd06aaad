"""The frozen teacher of knowledge distillation and the forward hook that runs it.

The teacher is a deep copy of the model made before any compression module is inserted (the
builders' layouts are all computed before the merged layout is applied), with nncompress's
runtime taken out of the copy. It is kept outside the student, so it adds no ``state_dict``
key and no parameter to ``model.parameters()``; its parameters have ``requires_grad=False``.

Mode: the teacher stays in training mode, as in NNCF 2.x, so that it returns what the student's
training forward returns (e.g. auxiliary heads that only exist in training), but its
normalisation layers (BatchNorm, InstanceNorm) and dropout modules are in eval mode: it
normalises with its running statistics, never updates them, and drops nothing. NNCF 2.x ran the
whole teacher in training mode (batch statistics, running statistics updated by every batch,
dropout active). Dropout applied functionally from a module's ``training`` flag (some attention
implementations) still runs in the teacher, as in NNCF.

Device and dtype: ``model.to(...)`` does not reach the teacher, which is not a sub-module; before
each teacher forward the hook compares one parameter of the student with the teacher's, and when
they differ (the student was moved or cast) moves every teacher tensor to the device (and
floating dtype) of the student tensor of the same name.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from nncompress.errors import DistillationError
from nncompress.torch.insertion import remove_runtime

from .outputs import flatten_outputs


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (see the module docstring), without nncompress modules or hooks.

    :param model: the model before compression modules are inserted.
    :return: the teacher.
    """
    teacher = copy.deepcopy(model)
    remove_runtime(teacher)  # the capture may have installed it (empty) on the model
    remove_teacher_hooks(teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    teacher.train()
    for m in teacher.modules():
        if isinstance(m, (_NormBase, _DropoutNd)):
            m.eval()
    return teacher


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def teacher_fingerprint(teacher: nn.Module) -> list[float]:
    """``[sum |w|, sum w**2]`` over the teacher's floating-point parameters and buffers (float64).

    Saved in the compression state: the teacher itself is not, so a resume from a model with
    other weights (a fresh, untrained one) can be told apart from a resume from the original.

    :param teacher: the teacher.
    :return: the two sums.
    """
    sums = [torch.stack([t.detach().double().abs().sum(), t.detach().double().square().sum()]).cpu()
            for t in _tensors(teacher).values() if t.is_floating_point()]  # one device sync per tensor at most
    total = torch.stack(sums).sum(0) if sums else torch.zeros(2, dtype=torch.float64)
    return [float(total[0]), float(total[1])]


class TeacherRunner:
    """Forward hook of the student (``register_forward_hook(..., with_kwargs=True)``).

    After each forward of the student in training mode whose outputs require gradients, it runs
    the teacher on the same arguments under ``torch.no_grad()`` and hands both outputs to
    ``record``. A training forward without gradients (``torch.no_grad()``, BatchNorm adaptation)
    calls ``clear`` instead and skips the teacher; an eval-mode forward does nothing.

    Copies of the student (``copy.deepcopy``, as ``strip(do_copy=True)`` makes) share this runner,
    which ignores them; a pickled student gets a runner that does nothing. A training forward of an
    ``nn.DataParallel`` replica raises :class:`DistillationError` (DistributedDataParallel works).

    :param student: the compressed model.
    :param teacher: the frozen teacher (:func:`make_teacher`).
    :param record: ``record(student_outputs_requiring_grad, teacher_output)``.
    :param clear: forget the last loss.
    """

    def __init__(
        self,
        student: nn.Module | None,
        teacher: nn.Module | None,
        record: Callable[[list[tuple[Any, torch.Tensor]], Any], None] | None,
        clear: Callable[[], None] | None,
    ) -> None:
        self._student = weakref.ref(student) if student is not None else None
        self.teacher = teacher
        self._record = record
        self._clear = clear
        names = set(_tensors(teacher)) if teacher is not None else set()
        student_params = dict(student.named_parameters()) if student is not None else {}
        self._probe = next((n for n in student_params if n in names), None)  # a name both have

    def __deepcopy__(self, memo: dict[int, Any]) -> TeacherRunner:
        return self  # a copy of the student must not copy the teacher; the runner ignores copies

    def __reduce__(self) -> tuple[Callable[..., TeacherRunner], tuple[None, None, None, None]]:
        return TeacherRunner, (None, None, None, None)

    @property
    def student(self) -> nn.Module | None:
        """The student, or ``None`` (a pickled runner, or the student was deleted)."""
        return self._student() if self._student is not None else None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """Run the teacher after a training forward of the student (see the class docstring)."""
        record, clear = self._record, self._clear
        if module.training and getattr(module, "_is_replica", False) and self.teacher is not None:
            raise DistillationError(
                "knowledge_distillation does not support torch.nn.DataParallel (its replicas would train without "
                "the teacher); use DistributedDataParallel, or one device"
            )
        if not module.training or module is not self.student or self.teacher is None or record is None:
            return
        leaves = [(p, t) for p, t in flatten_outputs(output) if t.requires_grad]
        if not leaves:
            if clear is not None:
                clear()
            return
        self.follow_student(module)
        with torch.no_grad():
            teacher_output = self.teacher(*args, **kwargs)
        record(leaves, teacher_output)

    def follow_student(self, student: nn.Module) -> None:
        """Move the teacher's tensors to the device and dtype of the student's, if the student moved."""
        if self._probe is None or self.teacher is None:
            return
        s = student.get_parameter(self._probe)
        t = self.teacher.get_parameter(self._probe)
        if s.device == t.device and s.dtype == t.dtype:
            return
        mine = _tensors(student)
        with torch.no_grad():
            for name, tensor in _tensors(self.teacher).items():
                ref = mine.get(name)
                if ref is None:
                    continue
                dtype = ref.dtype if (ref.is_floating_point() and tensor.is_floating_point()) else tensor.dtype
                if tensor.device != ref.device or tensor.dtype != dtype:
                    tensor.data = tensor.data.to(device=ref.device, dtype=dtype)


def attach(student: nn.Module, runner: TeacherRunner) -> None:
    """Register ``runner`` as the last forward hook of ``student``, after nncompress's runtime hooks
    (so the teacher's operations run outside the runtime's hook mode)."""
    student.register_forward_hook(runner, with_kwargs=True)


def teacher_hooks(model: nn.Module) -> list[int]:
    """Ids of the forward hooks of ``model`` that are :class:`TeacherRunner` objects."""
    return [hid for hid, hook in model._forward_hooks.items() if isinstance(hook, TeacherRunner)]


def distilling(model: nn.Module) -> bool:
    """Whether a :class:`TeacherRunner` on ``model`` runs a teacher for it (not a copy's inert one)."""
    hooks = model._forward_hooks.values()
    return any(isinstance(h, TeacherRunner) and h.student is model for h in hooks)


def remove_teacher_hooks(model: nn.Module) -> bool:
    """Take every :class:`TeacherRunner` off ``model`` (the root module only, where they are put).

    :param model: a model, compressed or a copy of one.
    :return: whether there was one.
    """
    ids = teacher_hooks(model)
    for hid in ids:
        del model._forward_hooks[hid]
        model._forward_hooks_with_kwargs.pop(hid, None)
        model._forward_hooks_always_called.pop(hid, None)
    return bool(ids)
