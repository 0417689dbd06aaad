"""INT8 post-training quantization: ``nnc.quantize`` from 300 unlabeled images, ONNX export, QAT continuation.

Trains the digits CNN (FP32), quantizes it without labels or training, compares accuracy,
exports ONNX that onnxruntime runs with integer convolutions, then fine-tunes the quantized
model for one epoch as quantization-aware training::

    python examples/digits_ptq.py --out-dir runs/ptq
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort
import torch

import nncompress as nnc
from nncompress.demo.digits import digits_loaders, evaluate, train_dense, train_epoch


def main(out_dir: str) -> None:
    """Run the example, writing ``digits_ptq_int8.onnx`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits_loaders()
    dense = train_dense(epochs=10)
    print(f"FP32 accuracy {evaluate(dense, test):.4f}")

    calibration = nnc.Dataset(train, transform_fn=lambda batch: batch[0])  # images only, no labels
    quantized = nnc.quantize(dense, calibration, subset_size=300)
    print(f"INT8 post-training accuracy {evaluate(quantized, test):.4f}")

    path = out / "digits_ptq_int8.onnx"
    nnc.export_model(quantized, str(path), model_args=(torch.zeros(1, 1, 8, 8),))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, labels = next(iter(test))
    logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    print(f"onnxruntime accuracy on one test batch {(logits.argmax(1) == labels.numpy()).mean():.4f}")

    # the quantizers' steps are learnable: train further, as QAT
    ctrl = nnc.compression_controller(quantized)
    optimizer = torch.optim.Adam(quantized.parameters(), lr=1e-4)
    train_epoch(quantized, train, optimizer, ctrl)
    print(f"INT8 after one QAT epoch {evaluate(quantized, test):.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/ptq")
    main(parser.parse_args().out_dir)
