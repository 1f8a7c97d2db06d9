"""The model server side: model repository, ONNX Runtime sessions (and, later, the shared server)."""
