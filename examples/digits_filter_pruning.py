"""Filter pruning from an NNCF 2.x config file: 40% of a ResNet's FLOPs removed, physically.

Trains a small digits ResNet (residual adds, BatchNorm, a strided stage with a downsample conv),
prunes whole filters while fine-tuning (an exponential schedule from 10% to 40% of the FLOPs over
three epochs, then frozen), checkpoints half-way, resumes in a fresh model, and strips the masks
into a smaller ResNet of the same class and a smaller ONNX file::

    python examples/digits_filter_pruning.py --out-dir runs/pruning

Only the lines marked ``# nncompress`` are specific to compression.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort
import torch

import nncompress as nnc
from nncompress.demo.cnns import CifarResNet
from nncompress.demo.digits import digits_loaders, evaluate, train_dense, train_epoch

CONFIG = Path(__file__).parent / "configs" / "digits_filter_pruning.json"


def digits_resnet() -> CifarResNet:
    """Stem conv 16, a 16-channel block, strided 32- and 64-channel blocks with 1x1 downsample convs."""
    return CifarResNet(num_classes=10, widths=(16, 32, 64), blocks=1, in_channels=1)


def main(out_dir: str) -> None:
    """Run the example, writing the checkpoint and ``digits_pruned.onnx`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits_loaders()
    dense = train_dense(seed=0, loaders=(train, test), factory=digits_resnet)  # your pre-trained model
    dense_params = sum(p.numel() for p in dense.parameters())
    print(f"dense accuracy {evaluate(dense, test):.4f}, {dense_params} parameters")

    config = nnc.CompressionConfig.from_json(CONFIG)
    ctrl, model = nnc.create_compressed_model(dense, config)  # nncompress
    optimizer = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["base_lr"])
    half = config["epochs"] // 2
    for epoch in range(half):
        ctrl.scheduler.epoch_step()  # nncompress: sets this epoch's pruning level
        train_epoch(model, train, optimizer, ctrl)  # calls ctrl.scheduler.step() and adds ctrl.loss()
        stats = ctrl.statistics().filter_pruning  # nncompress
        print(f"epoch {epoch}: FLOPs removed {stats.flops_pruning_level:.3f}, accuracy {evaluate(model, test):.4f}")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "compression_state": ctrl.get_compression_state()}, out / "checkpoint.pt")  # nncompress

    # resume, as after a restart: a fresh model, the same config, the saved state, then the weights
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    ctrl, model = nnc.create_compressed_model(digits_resnet(), config,
                                              compression_state=checkpoint["compression_state"])  # nncompress
    model.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["base_lr"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for _ in range(half, config["epochs"]):
        ctrl.scheduler.epoch_step()  # nncompress
        train_epoch(model, train, optimizer, ctrl)
    print(f"pruned accuracy {evaluate(model, test):.4f}")
    print(ctrl.statistics().to_str())

    small = ctrl.strip()  # nncompress: a CifarResNet with the pruned channels removed
    print(f"stripped: {type(small).__name__}, {sum(p.numel() for p in small.parameters())} parameters, "
          f"accuracy {evaluate(small, test):.4f}")
    path = out / "digits_pruned.onnx"
    ctrl.export_model(str(path), input_names=["images"], output_names=["logits"])  # nncompress
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, y = next(iter(test))
    logits = session.run(None, {"images": x.numpy()})[0]
    print(f"onnxruntime accuracy on one test batch {(logits.argmax(1) == y.numpy()).mean():.4f}; wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/pruning")
    main(parser.parse_args().out_dir)
