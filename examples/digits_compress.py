"""Any NNCF 2.x config on the digits CNN: RB sparsity, distillation, mixed precision, combinations.

Trains the dense CNN, compresses it with the config, fine-tunes it in the usual NNCF 2.x loop,
prints the statistics, exports ONNX and checks the file in onnxruntime::

    python examples/digits_compress.py examples/configs/digits_rb_sparsity.json
    python examples/digits_compress.py examples/configs/digits_distillation.json
    python examples/digits_compress.py examples/configs/digits_mixed_precision.json

The config's ``epochs`` (default 2) and ``optimizer.base_lr`` (default 1e-3) drive the loop; an
``optimizer.mask_lr`` gives the parameters nncompress inserted (RB's mask logits, quantizer
ranges) their own learning rate. Only the lines marked ``# nncompress`` are specific to compression.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import onnxruntime as ort
import torch

import nncompress as nnc
from nncompress.demo.digits import digits_loaders, evaluate, train_dense, train_epoch


def main(config_path: str, out_dir: str, epochs: int | None = None) -> None:
    """Run the example with the config at ``config_path``, writing ``<config name>.onnx`` to ``out_dir``.

    :param epochs: fine-tuning epochs instead of the config's ``epochs``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits_loaders()
    dense = train_dense(seed=0, loaders=(train, test))  # your pre-trained model
    print(f"dense accuracy {evaluate(dense, test):.4f}")

    config = nnc.CompressionConfig.from_json(config_path)  # nncompress
    optimizer_config = config.get("optimizer", {})
    lr = optimizer_config.get("base_lr", 1e-3)
    torch.manual_seed(0)
    ctrl, model = nnc.create_compressed_model(copy.deepcopy(dense), config, init_data=train)  # nncompress
    print(f"compressed accuracy before fine-tuning {evaluate(model, test):.4f}")
    inserted = {id(p) for p in model.nncompress.parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if id(p) not in inserted], lr=lr)
    if inserted:
        nnc.add_compression_parameters(optimizer, model, lr=optimizer_config.get("mask_lr", lr))  # nncompress
    for epoch in range(config.get("epochs", 2) if epochs is None else epochs):
        ctrl.scheduler.epoch_step()  # nncompress
        loss = train_epoch(model, train, optimizer, ctrl)  # calls ctrl.scheduler.step(), adds ctrl.loss()
        print(f"epoch {epoch}: loss {loss:.4f}, accuracy {evaluate(model, test):.4f}, "
              f"stage {ctrl.compression_stage().name}")  # nncompress
    print(ctrl.statistics().to_str())  # nncompress

    path = out / f"{Path(config_path).stem}.onnx"
    ctrl.export_model(str(path), input_names=["images"], output_names=["logits"])  # nncompress
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = torch.cat([x for x, _ in test])
    labels = torch.cat([y for _, y in test])
    logits = session.run(None, {"images": xs.numpy()})[0]
    print(f"onnxruntime accuracy {(logits.argmax(1) == labels.numpy()).mean():.4f}; wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an NNCF 2.x JSON config with input_info [1, 1, 8, 8]")
    parser.add_argument("--out-dir", default="runs/compress")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the config's epochs")
    args = parser.parse_args()
    main(args.config, args.out_dir, args.epochs)
