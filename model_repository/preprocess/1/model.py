"""Triton Python model ``preprocess``: encoded image bytes -> detector input and crop source.

The pixel work is client.imaging.letterbox, the same function training uses. Output sizes come from
this model's config (generated from client/spec.py). A request whose bytes are not an image gets a
TritonError with code INVALID_ARG naming the reason; other requests of the batch go on.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from client import imaging


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.outputs = [o["name"] for o in self.config["output"]]
        expected = ["det_image", "crop_source", "image_size"]
        if sorted(self.outputs) != sorted(expected):
            raise pb_utils.TritonModelException(f"preprocess config outputs {self.outputs}, expected {expected}")

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy()
            try:
                if data.size != 1:
                    raise imaging.ImageDecodeError(f"expected exactly one encoded image per request, got {data.size}")
                raw = data.reshape(-1)[0]
                img = imaging.decode(raw if isinstance(raw, bytes) else bytes(raw))
                det, src, size = imaging.letterbox(img)
            except imaging.ImageDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"preprocess: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            out = {"det_image": det, "crop_source": src, "image_size": size}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(out[n])) for n in self.outputs]))
        return responses
