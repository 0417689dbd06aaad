"""PyTorch surgery: the hook runtime, strip, ONNX export, example inputs."""
