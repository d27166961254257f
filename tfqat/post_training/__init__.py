"""Post-training quantization steps on a tfqat model: equalization, bias correction, adaptive rounding, layer by layer."""
