"""The flowers workflow on top of the library: data, training, quantization methods, pipeline, study, report."""
