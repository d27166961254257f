"""TFLite: int8 export, the shift-only verifier, running models with LiteRT, Keras-LiteRT agreement."""
