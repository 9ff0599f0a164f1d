"""tuneserve serving side: torch-free model repository, ONNX Runtime sessions, pre/post-processing."""
