"""Graph transforms and analyses of Keras models: layer graph, BatchNorm folding, cross-layer equalization, ranges."""
