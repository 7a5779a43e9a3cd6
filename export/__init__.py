"""The model factory: data -> training (detector, classifier, embedder) -> ONNX -> model_repository/."""
