"""Float graph rewrites: a model flattened and rebuilt in the layers the power-of-two scheme quantizes, computing the same function."""
