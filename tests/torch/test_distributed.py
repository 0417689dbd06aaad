"""Two processes with gloo on CPU: DDP training of a sparsified model keeps ranks in sync."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nncompress as nnc
from tests.algorithms.helpers import sparsity_config
from tests.model_zoo import ResidualCNN


def _worker(rank: int, world: int, out: str) -> None:
    # file rendezvous: no TCP port to race for when tests run in parallel
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ResidualCNN()
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    data = [(torch.randn(8, 1, 8, 8, generator=g) + rank, torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    config = sparsity_config(
        {"sparsity_init": 0.2, "sparsity_target": 0.6, "sparsity_target_epoch": 2},
        initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": 16}},
    )
    ctrl, model = nnc.create_compressed_model(model, config, init_data=data)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, Path(out) / f"init{rank}.pt")
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        for x, y in data:
            ctrl.scheduler.step()
            loss = torch.nn.functional.cross_entropy(ddp(x), y) + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
    # BatchNorm running statistics after DDP training are per rank by DDP's design (buffers are
    # broadcast at the start of each forward), so compare parameters and masks.
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k}
    torch.save(state, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _spawn(worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Run ``worker`` on 2 ranks. One retry in a fresh folder when a rank dies of an
    infrastructure error (gloo sockets on a loaded 2-core machine), never for a failed check,
    which the tests do in this process."""
    try:
        mp.spawn(worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessRaisedException as first:
        retry = tmp_path / "retry"
        retry.mkdir()
        print(f"rank failed, retrying once: {first}")
        mp.spawn(worker, args=(2, str(retry)), nprocs=2, join=True)
        for f in retry.iterdir():
            f.replace(tmp_path / f.name)


def test_ddp_two_ranks_stay_identical(tmp_path: Path) -> None:
    _spawn(_worker, tmp_path)
    i0, i1 = torch.load(tmp_path / "init0.pt"), torch.load(tmp_path / "init1.pt")
    for k in i0:  # BatchNorm adaptation on different data per rank ends in the same statistics
        assert torch.equal(i0[k], i1[k]), k
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys()
    assert any(k.endswith(".mask") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    masks = [v for k, v in r0.items() if k.endswith(".mask")]
    level = sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)
    assert abs(level - 0.6) < 0.01


def _range_worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous-q", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ResidualCNN()
    g = torch.Generator().manual_seed(200 + rank)
    data = [(torch.randn(8, 1, 8, 8, generator=g) * (1 + rank), torch.zeros(8, dtype=torch.long))]
    config = {"input_info": {"sample_size": [1, 1, 8, 8]},
              "compression": {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}}
    ctrl, model = nnc.create_compressed_model(model, config, init_data=data)
    torch.save({k: v.clone() for k, v in model.state_dict().items() if "nncompress" in k}, Path(out) / f"q{rank}.pt")
    dist.destroy_process_group()


def test_quantizer_ranges_agree_across_ranks(tmp_path: Path) -> None:
    _spawn(_range_worker, tmp_path)
    q0, q1 = torch.load(tmp_path / "q0.pt"), torch.load(tmp_path / "q1.pt")
    assert any(k.endswith(".scale") for k in q0)
    for k in q0:  # rank 1 saw twice as wide data; both end with the same ranges
        assert torch.equal(q0[k], q1[k]), k
