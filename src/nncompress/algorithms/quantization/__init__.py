"""Quantization-aware training: fake quantizers on weights and activations, INT8 QDQ export."""
