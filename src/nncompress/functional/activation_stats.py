"""Statistics of a layer's input activations, accumulated chunk by chunk in float64.

Tensor in, tensor out. A layer's inputs arrive as chunks ``x`` of shape ``[..., K]`` (one
calibration sample each: every leading dimension is a token); ``K`` is the layer's input size.
Two accumulators:

* :class:`ActivationStats`, per input channel ``k`` over all ``T`` tokens seen:
  ``mean_sq[k] = 1/T sum_t x_tk^2`` (scale estimation's importance, the diagonal of the Hessian),
  ``mean_abs[k] = 1/T sum_t |x_tk|`` (AWQ's channel magnitude), ``variance[k]`` (over all tokens,
  merged chunk by chunk with Chan's parallel formula) and ``max_variance[k]``, the largest
  variance of one chunk (NNCF's ``max_activation_variance`` takes it over samples);
* :func:`hessian_accumulate`, the running mean ``H = 1/T sum_t x_t^T x_t`` ``[K, K]`` of GPTQ
  (the layer-wise squared error ``||X W^T - X Wq^T||^2 = T tr((W - Wq) H (W - Wq)^T)``).

Example::

    stats = ActivationStats.empty(k)
    h, count = None, 0
    for x in chunks:                 # [batch, tokens, K]
        stats.update(x)
        h, count = hessian_accumulate(h, count, x)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nncompress.errors import InvalidArgumentError


@dataclass
class ActivationStats:
    """Per-input-channel statistics of the tokens seen so far (float64 accumulators).

    :param count: tokens seen.
    :param mean: ``[K]`` mean of ``x``.
    :param m2: ``[K]`` sum of squared deviations from ``mean`` (Chan et al.).
    :param sum_sq: ``[K]`` sum of ``x^2``.
    :param sum_abs: ``[K]`` sum of ``|x|``.
    :param max_variance: ``[K]`` largest per-chunk variance (population, over the chunk's tokens).
    """

    count: int
    mean: Tensor
    m2: Tensor
    sum_sq: Tensor
    sum_abs: Tensor
    max_variance: Tensor

    @classmethod
    def empty(cls, in_features: int, device: torch.device | str | None = None) -> ActivationStats:
        """Statistics of no tokens for ``in_features`` channels."""
        def zeros() -> Tensor:
            return torch.zeros(in_features, dtype=torch.float64, device=device)
        return cls(0, zeros(), zeros(), zeros(), zeros(), zeros())

    @property
    def in_features(self) -> int:
        """``K``, the number of channels."""
        return int(self.mean.shape[0])

    def update(self, x: Tensor) -> None:
        """Add a chunk of tokens ``x`` ``[..., K]``.

        :raises InvalidArgumentError: if the last dimension is not ``K``.
        """
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InvalidArgumentError(
                f"activation chunk must end in {self.in_features} channels, got shape {tuple(x.shape)}"
            )
        xf = x.detach().reshape(-1, self.in_features).to(self.mean.device, torch.float64)
        n = xf.shape[0]
        if n == 0:
            return
        chunk_mean = xf.mean(dim=0)
        chunk_m2 = ((xf - chunk_mean) ** 2).sum(dim=0)
        total = self.count + n
        delta = chunk_mean - self.mean
        self.m2 += chunk_m2 + delta**2 * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total
        self.sum_sq += (xf * xf).sum(dim=0)
        self.sum_abs += xf.abs().sum(dim=0)
        torch.maximum(self.max_variance, chunk_m2 / n, out=self.max_variance)

    def _checked_count(self) -> int:
        if self.count == 0:
            raise InvalidArgumentError("no activations were collected: run at least one calibration sample")
        return self.count

    @property
    def mean_sq(self) -> Tensor:
        """``[K]`` mean of ``x^2``."""
        return self.sum_sq / self._checked_count()

    @property
    def mean_abs(self) -> Tensor:
        """``[K]`` mean of ``|x|``."""
        return self.sum_abs / self._checked_count()

    @property
    def variance(self) -> Tensor:
        """``[K]`` population variance over all tokens seen."""
        return self.m2 / self._checked_count()

    def __str__(self) -> str:
        if self.count == 0:
            return f"ActivationStats(K={self.in_features}, no tokens)"
        return (
            f"ActivationStats(K={self.in_features}, tokens={self.count}, "
            f"mean x^2={float(self.mean_sq.mean()):.4g}, mean |x|={float(self.mean_abs.mean()):.4g}, "
            f"mean variance={float(self.variance.mean()):.4g}, max variance={float(self.max_variance.max()):.4g})"
        )


def hessian_accumulate(h: Tensor | None, count: int, x: Tensor) -> tuple[Tensor, int]:
    """Fold a chunk ``x`` ``[..., K]`` into the running mean ``H = 1/T sum_t x_t^T x_t``.

    The chunk's ``x^T x`` is formed in ``x``'s dtype (float32 keeps the ``K x K`` product fast on
    CPU; its relative rounding is ~1e-7 per chunk) and added to a float64 mean:
    ``H <- H * T / (T + n) + x^T x / (T + n)``.

    :param h: ``[K, K]`` float64 mean so far, ``None`` before the first chunk.
    :param count: tokens ``T`` behind ``h``.
    :param x: the chunk; leading dimensions are tokens.
    :return: ``(H, T + n)``.
    :raises InvalidArgumentError: if ``x``'s channels do not match ``h``.
    """
    k = x.shape[-1]
    if h is not None and tuple(h.shape) != (k, k):
        raise InvalidArgumentError(f"hessian has shape {tuple(h.shape)} but the chunk has {k} channels")
    xf = x.detach().reshape(-1, k)
    if not xf.is_floating_point() or xf.dtype in (torch.float16, torch.bfloat16):
        xf = xf.float()
    n = xf.shape[0]
    if h is None:
        h = torch.zeros(k, k, dtype=torch.float64, device=xf.device)
    if n == 0:
        return h, count
    total = count + n
    h = h.mul(count / total).add_((xf.T @ xf).to(torch.float64), alpha=1.0 / total)
    return h, total
