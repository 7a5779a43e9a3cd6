"""The ``retrieval`` ensemble run in process: the same ONNX files, the same steps, the same tensor names.

``Pipeline(repository)`` loads every ONNX model of ``spec.ONNX_MODELS`` once (onnxruntime, CPU) and
chains an ensemble's steps (``spec.ENSEMBLES``) the way export/repository.py writes its config: each step
takes its inputs by name from what the request and the earlier steps produced. The ``preprocess`` step is
``imaging.decode`` + ``imaging.letterbox``, the code the served Python model runs. It is the reference
the ensembles are tested against, what export.evaluate runs, and the baseline Triton is measured against.
``every_row=True`` swaps the served crop graph for the one without the row selection (every detection,
then the whole image): export.evaluate measures row policies on it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnxruntime as ort

from client import imaging, spec
from client.result import ImageResult

Tensors = dict[str, np.ndarray]


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``path``; ``threads`` = intra-op threads (0: onnxruntime decides)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; build the models first: python -m export.build")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def preprocess(feed: Mapping[str, np.ndarray]) -> Tensors:
    """The ``preprocess`` step: one encoded image -> the outputs of ``spec.PREPROCESS``."""
    data = np.asarray(feed[spec.IMAGE_BYTES.name], dtype=object).reshape(-1)
    if data.size != 1:
        raise imaging.ImageDecodeError(f"expected exactly one encoded image, got {data.size}")
    arrays = imaging.letterbox(imaging.decode(bytes(data[0])))
    return {t.name: a for t, a in zip(spec.PREPROCESS.outputs, arrays)}


class Pipeline:
    def __init__(self, repository: str | Path, *, threads: int = 0, every_row: bool = False):
        self.repository = Path(repository)
        self.models = {m.name: m for m in spec.MODELS}
        self.sessions = {m.name: session(spec.onnx_file(self.repository, m.name), threads) for m in spec.ONNX_MODELS}
        if every_row:
            from export.crop_graph import build_crop_model

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.sessions[spec.CROP.name] = ort.InferenceSession(build_crop_model(every_row=True).SerializeToString(), opts,
                                                                 providers=["CPUExecutionProvider"])
        self._python: dict[str, Callable[[Mapping[str, np.ndarray]], Tensors]] = {spec.PREPROCESS.name: preprocess}
        missing = [m.name for m in spec.MODELS if m.name not in self.sessions and m.name not in self._python]
        if missing:
            raise ValueError(f"no in-process runner for the steps {missing}")

    def step(self, name: str, feed: Mapping[str, np.ndarray]) -> Tensors:
        """Runs one step on ``feed`` (at least its spec inputs, by name; any batch its spec allows) and
        returns its spec outputs by name."""
        model = self.models.get(name)
        if model is None:
            raise KeyError(f"unknown step {name!r}; steps: {list(self.models)}")
        missing = [t.name for t in model.inputs if t.name not in feed]
        if missing:
            raise KeyError(f"step {name!r} needs {missing}; given {sorted(feed)}")
        inputs = {t.name: feed[t.name] for t in model.inputs}
        if name in self._python:
            return self._python[name](inputs)
        names = [t.name for t in model.outputs]
        return dict(zip(names, self.sessions[name].run(names, inputs)))

    def run(self, tensors: Mapping[str, np.ndarray], steps: tuple[spec.ModelSpec, ...] = spec.STEPS) -> Tensors:
        """Chains ``steps`` in order from ``tensors``; returns every tensor given and produced."""
        out = dict(tensors)
        for model in steps:
            out.update(self.step(model.name, out))
        return out

    def outputs(self, data: bytes, ensemble: str = spec.ENSEMBLE) -> Tensors:
        """An ensemble's outputs (``spec.ENSEMBLE_OUTPUTS`` by default) for one encoded image."""
        e = next((e for e in spec.ENSEMBLES if e.name == ensemble), None)
        if e is None:
            raise KeyError(f"unknown ensemble {ensemble!r}; ensembles: {[e.name for e in spec.ENSEMBLES]}")
        out = self.run({spec.IMAGE_BYTES.name: np.array([data], dtype=object)}, e.steps)
        return {t.name: out[t.name] for t in e.outputs}

    def infer(self, data: bytes) -> ImageResult:
        """What ``client.triton.RetrievalClient.infer`` returns for the same bytes."""
        return ImageResult.from_outputs(self.outputs(data))
