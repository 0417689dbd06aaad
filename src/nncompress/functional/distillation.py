"""Knowledge-distillation losses between a student's and a teacher's output tensors.

Tensor in, tensor out; nothing here knows about models. The formulas are those of NNCF 2.x's
``knowledge_distillation`` (``nncf/torch/knowledge_distillation/knowledge_distillation_loss.py``)
before its ``scale`` factor, which the caller applies:

* ``"softmax"`` (:func:`softmax_distillation_loss`): the cross-entropy of the student's softened
  distribution against the teacher's, on 2-D logits ``(batch, classes)``, averaged over the batch
  and multiplied by ``T**2`` (Hinton et al., 2015, so that gradients keep their size as ``T`` grows):

  .. math:: L = \\frac{T^2}{N} \\sum_n \\sum_c -\\operatorname{softmax}(z^t_n / T)_c
            \\log \\operatorname{softmax}(z^s_n / T)_c

  NNCF writes it as ``-(log_softmax(s/T) * softmax(t/T)).mean() * C * T**2``, the same value. It is
  a cross-entropy, not a KL divergence: the two differ by the teacher's entropy, a constant with
  no gradient, so the loss does not reach 0 when the student matches the teacher.
* ``"mse"`` (:func:`mse_distillation_loss`): the mean of the squared differences over all elements.

Example::

    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    softmax_distillation_loss(s, t, temperature=2.0).backward()
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nncompress.errors import InvalidArgumentError


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise InvalidArgumentError(
            f"student and teacher outputs must have the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )


def softmax_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy between temperature-softened teacher and student distributions, times ``T**2``.

    :param student: student logits, shape (N, C).
    :param teacher: teacher logits, shape (N, C) (no gradient flows into them).
    :param temperature: ``T > 0``; 1 uses the logits as they are.
    :return: a scalar tensor (in the student's dtype).
    :raises InvalidArgumentError: for tensors that are not 2-D of one shape, or ``T`` not a
        positive finite number.
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InvalidArgumentError(f"temperature must be a positive finite number, got {temperature!r}")
    _check_pair(student, teacher)
    if student.dim() != 2:
        raise InvalidArgumentError(
            f"softmax distillation takes 2-D logits (batch, classes), got shape {tuple(student.shape)}"
        )
    t = float(temperature)
    log_p_student = F.log_softmax(student / t, dim=1)  # (N, C)
    p_teacher = F.softmax(teacher.detach().to(student.dtype) / t, dim=1)  # (N, C)
    return -(p_teacher * log_p_student).sum(dim=1).mean() * (t * t)


def mse_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between student and teacher outputs, over every element.

    :param student: the student's output, any shape.
    :param teacher: the teacher's output, the same shape (no gradient flows into it).
    :return: a scalar tensor.
    :raises InvalidArgumentError: for tensors of different shapes.
    """
    _check_pair(student, teacher)
    return F.mse_loss(student, teacher.detach().to(student.dtype))
