"""Forward pre-hooks that gather what the data-aware algorithms need from linear layers' inputs.

Each hooked ``nn.Linear`` feeds a :class:`LayerCollector`: per-channel statistics
(:class:`~nncompress.functional.activation_stats.ActivationStats`) and/or the Hessian ``x^T x``,
each over its own budget of calibration samples (AWQ, scale estimation and GPTQ have separate
``subset_size``\\ s; a sample counts while the samples before it hold fewer than the budget).
Layers that read the very same input tensor (an attention's q, k and v projections, an MLP's
gate and up projections) share one collector: the first forward spots them by identity of
the input tensor, and later forwards update the shared collector once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nncompress.functional.activation_stats import ActivationStats, hessian_accumulate


@dataclass
class Needs:
    """Sample budgets of what to collect (0: not collected).

    :param stats: :class:`ActivationStats` over this many samples, per limit.
    :param hessian: Hessians over this many samples, per limit.
    """

    stats: set[int] = field(default_factory=set)
    hessian: set[int] = field(default_factory=set)


class LayerCollector:
    """What one layer input has shown so far, for every sample budget in :class:`Needs`.

    Inputs are buffered up to :data:`FLUSH_TOKENS` tokens and their Hessian folded in at once: one large
    ``x^T x`` costs far less than many small ones each followed by a ``K x K`` float64 update.
    """

    def __init__(self, in_features: int, needs: Needs, device: torch.device | None = None) -> None:
        self.stats = {limit: ActivationStats.empty(in_features, device) for limit in needs.stats}
        self.hessians: dict[int, tuple[Tensor | None, int]] = {limit: (None, 0) for limit in needs.hessian}
        self._limits = sorted(needs.stats | needs.hessian)
        self._buffer: list[tuple[Tensor, int]] = []  # (tokens [T, K], samples seen before them)
        self._buffered = 0

    def update(self, x: Tensor, seen: int) -> None:
        """Add input ``x`` ``[..., K]`` of a sample that ``seen`` samples came before."""
        if not self._limits or seen >= self._limits[-1]:
            return
        # a copy: the model may change its activations in place after this layer has read them
        flat = x.detach().reshape(-1, x.shape[-1])
        self._buffer.append((flat.clone() if flat.dtype in (torch.float32, torch.float64) else flat.float(), seen))
        self._buffered += flat.shape[0]
        if self._buffered >= FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered inputs into the statistics."""
        for limit in self._limits:
            chunks = [t for t, seen in self._buffer if seen < limit]
            if not chunks:
                continue
            if limit in self.stats:  # sample by sample: max_variance is a maximum over samples
                for chunk in chunks:
                    self.stats[limit].update(chunk)
            if limit in self.hessians:
                x = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
                self.hessians[limit] = hessian_accumulate(*self.hessians[limit], x)
        self._buffer.clear()
        self._buffered = 0

    def hessian(self, limit: int) -> Tensor:
        """The mean ``x^T x`` over the first ``limit`` samples."""
        self.flush()
        h = self.hessians[limit][0]
        if h is None:
            raise RuntimeError("a hooked layer never ran: no Hessian was collected")
        return h

    def activation_stats(self, limit: int) -> ActivationStats:
        """Per-channel statistics over the first ``limit`` samples."""
        self.flush()
        return self.stats[limit]


#: Tokens buffered by a :class:`LayerCollector` before they are folded in.
FLUSH_TOKENS = 2048


class InputHooks:
    """Pre-hooks on named linears feeding shared :class:`LayerCollector`\\ s.

    :param modules: ``{name: nn.Linear}`` to watch.
    :param needs: what to collect.
    """

    def __init__(self, modules: Mapping[str, nn.Module], needs: Needs) -> None:
        self.modules = dict(modules)
        self.needs = needs
        self.collectors: dict[str, LayerCollector] = {}
        self.owner: dict[str, str] = {}
        self.seen = 0
        self._live: list[tuple[Tensor, str]] = []  # inputs of the current forward, kept alive for `is`

    def collector(self, name: str) -> LayerCollector:
        """The collector of layer ``name`` (shared with the layers reading the same input)."""
        return self.collectors[self.owner.get(name, name)]

    @contextmanager
    def attached(self) -> Iterator[InputHooks]:
        """Register the hooks for the ``with`` body; they are always removed."""
        handles = [m.register_forward_pre_hook(self._hook_for(name)) for name, m in self.modules.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._live.clear()

    def sample_done(self, batch: int) -> None:
        """Close one sample's forward; ``batch`` samples were in it."""
        self.seen += batch
        self._live.clear()

    def _hook_for(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], Tensor):
                return
            x = args[0]
            if name not in self.collectors and name not in self.owner:
                shared = next((owner for t, owner in self._live if t is x), None)
                if shared is not None:
                    self.owner[name] = shared
                    return
                self.collectors[name] = LayerCollector(x.shape[-1], self.needs, x.device)
            if name in self.owner:
                return
            self._live.append((x, name))
            with torch.no_grad():
                self.collectors[name].update(x, self.seen)

        return hook
