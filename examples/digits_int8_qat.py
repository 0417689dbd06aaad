"""INT8 quantization-aware training from an NNCF 2.x config file, with resume and ONNX export.

Trains the digits CNN, quantizes it (ranges from 256 training images), trains one epoch,
checkpoints, resumes in a fresh model, trains one more epoch and exports ONNX that onnxruntime
runs with QLinearConv kernels::

    python examples/digits_int8_qat.py --out-dir runs/qat
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort
import torch

import nncompress as nnc
from nncompress.demo.digits import DigitsCNN, digits_loaders, evaluate, train_dense, train_epoch

CONFIG = Path(__file__).parent / "configs" / "digits_int8_qat.json"


def main(out_dir: str) -> None:
    """Run the example, writing the checkpoint and ``digits_int8.onnx`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits_loaders()
    dense = train_dense(epochs=10)
    print(f"FP32 accuracy {evaluate(dense, test):.4f}")

    config = nnc.CompressionConfig.from_json(CONFIG)
    ctrl, model = nnc.create_compressed_model(dense, config, init_data=train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctrl.scheduler.epoch_step()
    train_epoch(model, train, optimizer, ctrl)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "compression_state": ctrl.get_compression_state()}, out / "checkpoint.pt")

    # resume, as after a restart: same config, saved compression state, then the weights
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    ctrl, model = nnc.create_compressed_model(DigitsCNN(), config,
                                              compression_state=checkpoint["compression_state"])
    model.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(checkpoint["optimizer"])
    ctrl.scheduler.epoch_step()
    train_epoch(model, train, optimizer, ctrl)
    print(f"INT8 QAT accuracy {evaluate(model, test):.4f}")
    print(ctrl.statistics().to_str())

    path = out / "digits_int8.onnx"
    ctrl.export_model(str(path), input_names=["images"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, y = next(iter(test))
    logits = session.run(None, {"images": x.numpy()})[0]
    print(f"onnxruntime accuracy on one test batch {(logits.argmax(1) == y.numpy()).mean():.4f}; wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/qat")
    main(parser.parse_args().out_dir)
