"""RB sparsity's ``distributed()``: every rank draws rank 0's mask noise (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nncompress as nnc
from tests.model_zoo import ResidualCNN

CONFIG = {"input_info": {"sample_size": [2, 1, 8, 8]}, "compression": {"algorithm": "rb_sparsity"}}


def _noisy_output(rank: int, device: str) -> torch.Tensor:
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(ResidualCNN(), CONFIG)
    model.to(device).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logits"):
                p.fill_(0.0)  # keep probability 1/2: the noise decides every element
    torch.manual_seed(100 + rank)  # each rank's own generators ...
    if device == "cuda":
        torch.cuda.manual_seed(100 + rank)
    if dist.is_initialized():
        ctrl.distributed()  # ... replaced by rank 0's
    with torch.no_grad():
        return model(torch.ones(2, 1, 8, 8, device=device)).cpu()


def _worker(rank: int, world: int, out: str, backend: str, device: str) -> None:
    dist.init_process_group(backend, init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.save(_noisy_output(rank, device), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_gloo_ranks_draw_the_same_noise(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path), "gloo", "cpu"), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    assert not torch.equal(_noisy_output(0, "cpu"), _noisy_output(1, "cpu"))  # no process group: own noise


@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs CUDA and NCCL")
def test_nccl_broadcasts_the_generator_states_on_the_gpu(tmp_path: Path) -> None:
    # NCCL broadcasts CUDA tensors only: the CPU generator state used to go out as a CPU tensor
    mp.spawn(_worker, args=(1, str(tmp_path), "nccl", "cuda"), nprocs=1, join=True)
    assert torch.isfinite(torch.load(tmp_path / "rank0.pt")).all()
