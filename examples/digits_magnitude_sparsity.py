"""Magnitude sparsity with the NNCF 2.x training-time flow, on real data (scikit-learn's digits).

Trains a small dense CNN, makes 70% of its conv/linear weights zero while fine-tuning,
saves a checkpoint half-way, resumes from it in a fresh model as after a restart, finishes
fine-tuning and exports the sparse model to ONNX::

    python examples/digits_magnitude_sparsity.py --out-dir runs/example

Copy the loop below into your own training script: only the lines marked ``# nncompress``
are specific to compression.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import nncompress as nnc
from nncompress.demo.digits import DigitsCNN, digits_loaders, evaluate, train_dense

CONFIG = Path(__file__).parent / "configs" / "digits_magnitude_sparsity.json"


def fine_tune(
    model: nn.Module,
    ctrl: nnc.CompressionAlgorithmController[nn.Module],
    optimizer: torch.optim.Optimizer,
    train: DataLoader[Any],
    test: DataLoader[Any],
    epochs: range,
) -> None:
    """The training loop of a compressed model (NNCF 2.x style)."""
    for epoch in epochs:
        ctrl.scheduler.epoch_step()  # nncompress: sets this epoch's sparsity level
        model.train()
        for x, y in train:
            ctrl.scheduler.step()  # nncompress
            loss = F.cross_entropy(model(x), y) + ctrl.loss()  # nncompress: + ctrl.loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        level = ctrl.statistics().to_dict()["magnitude_sparsity/layers_level"]  # nncompress
        print(f"epoch {epoch}: sparsity {level:.3f}, test accuracy {evaluate(model, test):.4f}")


def main() -> None:
    """Dense training, sparse fine-tuning with a checkpoint and resume, ONNX export."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/example")
    out = Path(parser.parse_args().out_dir)
    out.mkdir(parents=True, exist_ok=True)

    config = nnc.CompressionConfig.from_json(CONFIG)
    train, test = digits_loaders(batch_size=config["batch_size"], seed=0)
    dense = train_dense(seed=0, loaders=(train, test))  # your pre-trained model
    print(f"dense test accuracy: {evaluate(dense, test):.4f}")

    # 1. Compress and fine-tune for half of the epochs, then save a checkpoint.
    ctrl, model = nnc.create_compressed_model(dense, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["base_lr"])
    half = config["epochs"] // 2
    fine_tune(model, ctrl, optimizer, train, test, range(half))
    checkpoint = {
        "epoch": half,
        "model": model.state_dict(),  # the original keys plus masks under "nncompress."
        "optimizer": optimizer.state_dict(),
        "compression_state": ctrl.get_compression_state(),  # JSON-serialisable
    }
    torch.save(checkpoint, out / "checkpoint.pt")

    # 2. Resume, as after a restart: a fresh model, the same config, the saved state, the weights.
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    ctrl, model = nnc.create_compressed_model(DigitsCNN(), config, compression_state=ck["compression_state"])
    model.load_state_dict(ck["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["base_lr"])
    optimizer.load_state_dict(ck["optimizer"])
    print(f"resumed at epoch {ck['epoch']}: test accuracy {evaluate(model, test):.4f}")
    fine_tune(model, ctrl, optimizer, train, test, range(ck["epoch"], config["epochs"]))

    # 3. Statistics and export: the masks are baked into the weights of a stripped copy.
    print(ctrl.statistics().to_str())
    ctrl.export_model(str(out / "digits_sparse.onnx"))
    print(f"exported {out / 'digits_sparse.onnx'}")


if __name__ == "__main__":
    main()
