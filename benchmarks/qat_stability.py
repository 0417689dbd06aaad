"""Does quantization-aware training stay stable from random initialisation? (issue 8)

Full-size MobileNetV2, ResNet-50 and MobileNetV3-small shapes (``nncompress.demo.cnns``), random
weights, real digits upsampled to 3x32x32, batch 32: create the QAT model (range init on 64
samples, BatchNorm adaptation by default), then 10 training steps with SGD (lr 1e-3, momentum
0.9) and with Adam (lr 1e-3). For each run: losses finite?, first and last loss, and how far the
quantizers' steps moved: the largest growth (``step_now / step_at_init``, over every channel) of
the weight and the activation quantizers.

Two parameterisations of the learned quantity, in the same run:

* **range** (nncompress now, NNCF 2.x's): the parameter is the range ``a = step * L`` with NNCF's
  gradient;
* **LSQ step** (nncompress 0.1): the parameter is the step itself with LSQ's gradient factor
  ``1 / sqrt(N * qmax)``, emulated here on the same quantizers (the parameter divided by ``L``,
  and the factor set as the quantizer's gradient multiplier).

Prints a table and one JSON line. Run: ``python benchmarks/qat_stability.py`` (about 4 minutes).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nnc
from nncompress.algorithms.quantization.quantizers import FakeQuantizer
from nncompress.api.statistics import format_table
from nncompress.demo.cnns import MobileNetV2, MobileNetV3Small, ResNet50
from nncompress.demo.digits import digits_tensors
from nncompress.functional.quantize import lsq_grad_factor

THREADS = 2
STEPS = 10
BATCH = 32
MODELS: dict[str, Callable[[], nn.Module]] = {
    "MobileNetV2": MobileNetV2,
    "ResNet-50": ResNet50,
    "MobileNetV3-small": MobileNetV3Small,
}
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD lr 1e-3, momentum 0.9": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
    "Adam lr 1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
}


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real digits, upsampled to 32x32 and repeated to 3 channels."""
    x, y, _, _ = digits_tensors()
    x = F.interpolate(x[:n], size=32, mode="bilinear").repeat(1, 3, 1, 1)
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, n, BATCH)]


def as_lsq_step(model: nn.Module, quantizers: list[FakeQuantizer], example: torch.Tensor) -> None:
    """Make each quantizer learn its step with LSQ's factor (nncompress 0.1), in place."""
    sizes: dict[int, int] = {}

    def record(q: nn.Module, args: tuple[Any, ...]) -> None:
        sizes.setdefault(id(q), _per_step(q, args[0]))

    hooks = [q.register_forward_pre_hook(record) for q in quantizers]
    with torch.no_grad():
        model(example)  # reads each quantizer's buffers once (its divisor is then fixed)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for q in quantizers:
            q.scale.div_(q._divisor)
            q.min_scale.div_(q._divisor)
            q._divisor = 1.0
            q.lr_multiplier = lsq_grad_factor(max(sizes.get(id(q), 1), 1), q.levels[1])


def _per_step(q: nn.Module, x: torch.Tensor) -> int:
    """LSQ's N: elements one step covers in one example (weights: per channel)."""
    assert isinstance(q, FakeQuantizer)
    n = x.numel() // (x.shape[q.axis] if q.axis is not None else 1)
    return n // x.shape[0] if q.group == "activations" and x.dim() > 1 else n


def run(name: str, optimizer_name: str, parameterisation: str) -> dict[str, Any]:
    """One model, optimizer and parameterisation: 10 steps from the same random weights."""
    torch.manual_seed(0)
    data = batches(STEPS * BATCH)
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 64}}}}
    ctrl, model = nnc.create_compressed_model(MODELS[name](), config, init_data=data[:4])
    quantizers: list[FakeQuantizer] = list(ctrl.quantizers)  # type: ignore[attr-defined]
    if parameterisation == "LSQ step":
        as_lsq_step(model, quantizers, data[0][0])

    def steps() -> list[torch.Tensor]:
        return [q._step().clone() for q in quantizers]

    start = steps()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    model.train()
    losses = []
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    growth = {"weights": 0.0, "activations": 0.0}
    for q, before, after in zip(quantizers, start, steps()):
        growth[q.group] = max(growth[q.group], float((after / before).max()))
    return {"model": name, "optimizer": optimizer_name, "parameter": parameterisation,
            "finite": all(math.isfinite(v) for v in losses), "first_loss": losses[0], "last_loss": losses[-1],
            "weight_step_growth": growth["weights"], "activation_step_growth": growth["activations"]}


def main() -> None:
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    results = [run(m, o, p) for m in MODELS for o in OPTIMIZERS for p in ("range", "LSQ step")]
    print(format_table(
        ("model", "optimizer", "learned", "losses finite", "loss first -> last", "max weight step growth",
         "max activation step growth"),
        [(r["model"], r["optimizer"], r["parameter"], r["finite"], f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}",
          f"{r['weight_step_growth']:.2f}x", f"{r['activation_step_growth']:.2f}x") for r in results],
        title=f"QAT from random weights, {STEPS} steps of batch {BATCH} (digits at 3x32x32), {THREADS} threads",
    ))
    print(json.dumps({"benchmark": "qat_stability", "threads": THREADS, "steps": STEPS,
                      "total_s": time.perf_counter() - t0, "results": results}))


if __name__ == "__main__":
    main()
