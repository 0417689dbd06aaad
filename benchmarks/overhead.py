"""Overhead of nncompress on a training loop: capture time and sparsity training-step time.

For the digits CNN and a small BERT (random weights, MiniLM-like shape), in one run:

* capture time over the time of one forward pass (both under ``torch.no_grad``), and the whole
  ``create_compressed_model`` time over one forward pass;
* training-step time (forward, loss, backward, SGD step, ``scheduler.step()``) of the model
  with magnitude sparsity at 70% over the plain model's: median of 30 steps each, the two
  interleaved step by step so that machine noise hits both alike; three such rounds, and the
  round with the median ratio is reported;
* the same for RB sparsity (``rb_sparsity``, loss aiming at 50%): its step adds the noisy mask,
  the mask-logit gradients, ``ctrl.loss()`` and the optimizer's update of the logits (which
  ``model.parameters()`` includes), as in NNCF 2.x.

Prints a table and one JSON line. Run: ``python benchmarks/overhead.py`` (2 threads).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from timing import Batch, interleaved_steps, median_time, training_step  # benchmarks/timing.py
from torch import nn

import nncompress as nnc
from nncompress.api.statistics import format_table
from nncompress.demo.digits import DigitsCNN
from nncompress.graph.capture import capture


def measure(name: str, model: nn.Module, config: dict[str, Any], batch: Batch,
            loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """All figures for one model and one algorithm."""
    args, kwargs, _ = batch
    model.train()
    with torch.no_grad():
        forward = median_time(lambda: model(*args, **kwargs), 20)
    capture_s = min(capture(model, args, kwargs).capture_seconds for _ in range(3))
    compressed = copy.deepcopy(model)
    start = time.perf_counter()
    ctrl, compressed = nnc.create_compressed_model(compressed, config, example_input=(*args, kwargs) if kwargs else args[0])
    create_s = time.perf_counter() - start
    ctrl.scheduler.epoch_step()
    times = interleaved_steps({"plain": training_step(model, batch, loss_fn),
                               "sparse": training_step(compressed, batch, loss_fn, ctrl)})
    plain, sparse = times["plain"], times["sparse"]
    return {
        "model": name,
        "algorithm": config["compression"]["algorithm"],
        "forward_ms": forward * 1e3,
        "capture_ms": capture_s * 1e3,
        "capture_over_forward": capture_s / forward,
        "create_over_forward": create_s / forward,
        "plain_step_ms": plain * 1e3,
        "sparse_step_ms": sparse * 1e3,
        "step_ratio": sparse / plain,
        "sparsity": ctrl.compression_rate,
    }


ALGORITHMS = ("magnitude_sparsity", "rb_sparsity")


def _sparsity_config(sample: list[int], algorithm: str = "magnitude_sparsity") -> dict[str, Any]:
    if algorithm == "rb_sparsity":
        section: dict[str, Any] = {"algorithm": "rb_sparsity", "sparsity_init": 0.5,
                                   "params": {"sparsity_target": 0.5, "sparsity_target_epoch": 0}}
    else:
        section = {"algorithm": "magnitude_sparsity", "sparsity_init": 0.7,
                   "params": {"sparsity_target": 0.7, "sparsity_target_epoch": 0}}
    return {"input_info": {"sample_size": sample}, "compression": section}


def digits_case(algorithm: str) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    return measure("digits CNN (batch 64)", DigitsCNN(), _sparsity_config([64, 1, 8, 8], algorithm), ((x,), {}, y),
                   nn.functional.cross_entropy)


def bert_case(algorithm: str) -> dict[str, Any]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536)  # all-MiniLM-L6-v2's shape, random weights
    model = BertModel(cfg)
    ids = torch.randint(0, cfg.vocab_size, (8, 64))
    mask = torch.ones_like(ids)
    target = torch.randn(8, 64, cfg.hidden_size)

    def loss_fn(out: Any, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.last_hidden_state, t)

    config = _sparsity_config([8, 64], algorithm)
    config["compression"]["ignored_scopes"] = ["{re}.*embeddings.*"]
    return measure("BERT 6x384 (batch 8, seq 64)", model, config,
                   ((), {"input_ids": ids, "attention_mask": mask}, target), loss_fn)


def main() -> None:
    torch.set_num_threads(2)
    rows = [case(algorithm) for case in (digits_case, bert_case) for algorithm in ALGORITHMS]
    table = format_table(
        ("model", "algorithm", "forward ms", "capture/forward", "create/forward", "plain step ms", "sparse step ms",
         "step ratio"),
        [(r["model"], r["algorithm"], r["forward_ms"], r["capture_over_forward"], r["create_over_forward"],
          r["plain_step_ms"], r["sparse_step_ms"], r["step_ratio"]) for r in rows],
        title="nncompress overhead: magnitude sparsity at 70%, RB sparsity aiming at 50% "
              "(median of 30 interleaved steps, median of 3 rounds)",
    )
    print(table)
    print(json.dumps({"benchmark": "overhead", "results": rows}))


if __name__ == "__main__":
    main()
