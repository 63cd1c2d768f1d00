"""Text embedders: sentence-transformers, and the torch-free ONNX export that runs them."""
