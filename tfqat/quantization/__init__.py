"""The power-of-two int8 scheme: its math (pow2), TFMOT quantizers, per-layer configs, the scheme, accumulator links."""
