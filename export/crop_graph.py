"""The ``crop`` model, written directly as an ONNX graph (RoiAlign): no torch needed.

Inputs and outputs are those of ``spec.CROP``: K detector boxes plus the whole image are cut from the
padded-square crop source at CROP_SIZE, boxes are mapped to original pixels and a validity mask says
which rows are objects (row K is valid only when no detection is).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from client import spec


def _value_info(t: spec.Tensor) -> onnx.ValueInfoProto:
    dims = [None if d < 0 else d for d in t.dims]
    return helper.make_tensor_value_info(t.name, getattr(TensorProto, spec.onnx_dtype(t.dtype)), dims)


def build_crop_model(threshold: float = spec.SCORE_THRESHOLD) -> onnx.ModelProto:
    m = spec.CROP
    n = spec.NUM_ROWS
    src_side = float(spec.CROP_SOURCE_SIZE)

    def const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    inits = [
        const("axis0", [0], np.int64), const("idx_h", 0, np.int64), const("idx_w", 1, np.int64),
        const("zero", 0.0), const("zero2", [0.0, 0.0]), const("src_side", src_side), const("thr", threshold),
        const("u8_min", 0.0), const("u8_max", 255.0), const("batch_idx", np.zeros(n), np.int64),
        const("whole_score", [spec.WHOLE_IMAGE_SCORE]), const("shape_1x4", [1, 4], np.int64),
        const("shape_1", [1], np.int64),
    ]
    nodes = [
        helper.make_node("Cast", ["crop_source"], ["src_f"], to=TensorProto.FLOAT),
        helper.make_node("Squeeze", ["det_boxes", "axis0"], ["boxes_k"]),
        helper.make_node("Squeeze", ["det_scores", "axis0"], ["scores_k"]),
        helper.make_node("Gather", ["image_size", "idx_h"], ["h"]),
        helper.make_node("Gather", ["image_size", "idx_w"], ["w"]),
        helper.make_node("Max", ["h", "w"], ["side"]),
        # the whole image, normalised to the padded square: [0, 0, w/side, h/side]
        helper.make_node("Div", ["w", "side"], ["w_rel"]),
        helper.make_node("Div", ["h", "side"], ["h_rel"]),
        helper.make_node("Unsqueeze", ["w_rel", "axis0"], ["w_rel1"]),
        helper.make_node("Unsqueeze", ["h_rel", "axis0"], ["h_rel1"]),
        helper.make_node("Concat", ["zero2", "w_rel1", "h_rel1"], ["whole_flat"], axis=0),
        helper.make_node("Reshape", ["whole_flat", "shape_1x4"], ["whole_box"]),
        helper.make_node("Concat", ["boxes_k", "whole_box"], ["rows_norm"], axis=0),
        # crops
        helper.make_node("Mul", ["rows_norm", "src_side"], ["rois"]),
        helper.make_node("RoiAlign", ["src_f", "rois", "batch_idx"], ["crops_f"], mode="avg",
                         output_height=spec.CROP_SIZE, output_width=spec.CROP_SIZE, sampling_ratio=2,
                         spatial_scale=1.0, coordinate_transformation_mode="half_pixel"),
        helper.make_node("Round", ["crops_f"], ["crops_r"]),
        helper.make_node("Clip", ["crops_r", "u8_min", "u8_max"], ["crops_c"]),
        helper.make_node("Cast", ["crops_c"], ["crops"], to=TensorProto.UINT8),
        # boxes in original pixels, clipped to the image
        helper.make_node("Mul", ["rows_norm", "side"], ["boxes_raw"]),
        helper.make_node("Concat", ["w_rel1", "h_rel1", "w_rel1", "h_rel1"], ["rel_limits"], axis=0),
        helper.make_node("Mul", ["rel_limits", "side"], ["px_limits"]),
        helper.make_node("Max", ["boxes_raw", "zero"], ["boxes_pos"]),
        helper.make_node("Min", ["boxes_pos", "px_limits"], ["boxes"]),
        # validity: detections above threshold; the whole image only when none is
        helper.make_node("GreaterOrEqual", ["scores_k", "thr"], ["det_valid"]),
        helper.make_node("Cast", ["det_valid"], ["det_valid_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["det_valid_f"], ["any_valid_f"], keepdims=0),
        helper.make_node("Cast", ["any_valid_f"], ["any_valid"], to=TensorProto.BOOL),
        helper.make_node("Not", ["any_valid"], ["none_valid"]),
        helper.make_node("Reshape", ["none_valid", "shape_1"], ["whole_valid"]),
        helper.make_node("Concat", ["det_valid", "whole_valid"], ["valid"], axis=0),
        helper.make_node("Concat", ["scores_k", "whole_score"], ["scores"], axis=0),
    ]
    graph = helper.make_graph(nodes, "crop", [_value_info(t) for t in m.inputs], [_value_info(t) for t in m.outputs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.ONNX_OPSET)], producer_name="export.crop_graph")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
