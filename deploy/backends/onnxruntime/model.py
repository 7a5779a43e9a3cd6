"""A Python-based Triton backend named ``onnxruntime``: serves ``<model>/<version>/model.onnx`` with
onnxruntime, for the tritonserver of the nvidia-pytriton wheel, which has no native onnxruntime
backend. The same model repository runs unchanged on the NGC image's native backend.

Inputs and outputs are those named in the model's config.pbtxt; STRING outputs are sent as bytes.
Each failing request gets a TritonError (INVALID_ARG for bad inputs), the others go on.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"],
                            self.config.get("default_model_filename") or "model.onnx")
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(f"{self.config['name']}: {path} does not exist (run python -m export.build)")
        opts = ort.SessionOptions()
        threads = int(self.config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value", "0") or 0)
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]
        have = {o.name for o in self.session.get_outputs()}
        missing = [o for o in self.outputs if o not in have]
        if missing:
            raise pb_utils.TritonModelException(f"{path} lacks outputs {missing} named in config.pbtxt")

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            try:
                results = self.session.run(self.outputs, feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises several exception types for bad input
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.config['name']}: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            tensors = []
            for name, value in zip(self.outputs, results):
                if value.dtype == object:
                    value = np.array([v.encode() if isinstance(v, str) else v for v in value.reshape(-1)], dtype=object).reshape(value.shape)
                tensors.append(pb_utils.Tensor(name, value))
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
