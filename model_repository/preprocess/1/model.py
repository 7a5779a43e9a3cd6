"""Triton Python model ``preprocess``: encoded image bytes -> detector input and crop source.

The pixel work is ``imaging.letterbox``, the same function training and the in-process pipeline use;
``retrieval_contract`` is that code (client/spec.py, client/imaging.py), copied next to this file by
``python -m export.repository``, so the repository needs no project install. Tensor names come from the
spec. A request whose bytes are not an image gets a TritonError with code INVALID_ARG naming the reason;
other requests of the batch go on.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from retrieval_contract import imaging, spec


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.outputs = [o["name"] for o in config["output"]]
        expected = [t.name for t in spec.PREPROCESS.outputs]
        if sorted(self.outputs) != sorted(expected):
            raise pb_utils.TritonModelException(f"preprocess config outputs {self.outputs}, expected {expected} (client/spec.py)")

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, spec.IMAGE_BYTES.name).as_numpy()
            try:
                if data.size != 1:
                    raise imaging.ImageDecodeError(f"expected exactly one encoded image per request, got {data.size}")
                raw = data.reshape(-1)[0]
                img = imaging.decode(raw if isinstance(raw, bytes) else bytes(raw))
                arrays = imaging.letterbox(img)
            except imaging.ImageDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"preprocess: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            out = {t.name: a for t, a in zip(spec.PREPROCESS.outputs, arrays)}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(out[n])) for n in self.outputs]))
        return responses
