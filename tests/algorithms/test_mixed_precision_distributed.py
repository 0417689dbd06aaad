"""HAWQ on two gloo ranks with different data: the traces are averaged, so both choose the same bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nncompress as nnc
from tests.model_zoo import ResidualCNN

CONFIG = {"input_info": {"sample_size": [1, 1, 8, 8]},
          "compression": {"algorithm": "quantization",
                          "initializer": {"range": {"num_init_samples": 16},
                                          "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
                                          "precision": {"type": "hawq", "bits": [2, 4, 8], "compression_ratio": 2.0,
                                                        "num_data_points": 16, "iter_number": 3, "tolerance": 0}}}}


def _data(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    return [(torch.randn(16, 1, 8, 8, generator=g) * (1 + rank), torch.randint(0, 10, (16,), generator=g))]


def _hawq(rank: int) -> Any:
    torch.manual_seed(0)
    ctrl, _ = nnc.create_compressed_model(ResidualCNN(), CONFIG, init_data=_data(rank))
    return ctrl.hawq


def _worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    h = _hawq(rank)
    torch.save({"bits": h.bits, "traces": h.traces}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_average_traces_and_agree_on_bits(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0 == r1
    alone = [_hawq(rank).traces for rank in (0, 1)]
    assert alone[0] != alone[1]
    mean = [(a + b) / 2 for a, b in zip(*alone)]
    assert all(abs(t - m) <= 1e-9 * max(abs(m), 1e-12) for t, m in zip(r0["traces"], mean))
