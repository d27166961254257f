"""The integer reference executor of shift-only int8 .tflite files: numpy, no TensorFlow, no LiteRT runtime."""
