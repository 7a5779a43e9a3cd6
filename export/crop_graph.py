"""The ``crop`` and ``whole_crop`` models, written directly as ONNX graphs (NonMaxSuppression, RoiAlign):
no torch needed.

``crop`` (``spec.CROP``) selects the rows every caller gets — the row policy of client/spec.py: the
detections above SCORE_THRESHOLD, then at most EXTRA_CANDIDATES weaker ones scoring >= EXTRA_MIN_SCORE, a
box overlapping a better one by IoU > MAX_OVERLAP dropped (NonMaxSuppression), in score order — then
appends the whole image, cuts every row from the padded-square crop source at CROP_SIZE, maps boxes to
original pixels and says which rows are objects (the whole image is valid only when no detection is). It also
cuts every row again at its box shrunk and grown by QUERY_BOX_JITTER (``jitter_crops``, for the search side's
``query_features``).
``every_row=True`` builds the same graph without the selection (all K detections, then the whole image):
training cuts its crops with it, and export.evaluate measures row policies on it.
``whole_crop`` (``spec.WHOLE_CROP``) cuts the whole-image row alone, the same way.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from client import spec


def _value_info(t: spec.Tensor) -> onnx.ValueInfoProto:
    dims = [None if d < 0 else d for d in t.dims]
    return helper.make_tensor_value_info(t.name, getattr(TensorProto, spec.onnx_dtype(t.dtype)), dims)


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _whole_box_nodes() -> tuple[list, list]:
    """``image_size`` -> ``whole_box`` [1, 4] (the image inside the padded square, normalised), ``side``,
    ``w_rel1`` and ``h_rel1``."""
    inits = [_const("axis0", [0], np.int64), _const("idx_h", 0, np.int64), _const("idx_w", 1, np.int64),
             _const("zero2", [0.0, 0.0]), _const("shape_1x4", [1, 4], np.int64)]
    nodes = [
        helper.make_node("Gather", ["image_size", "idx_h"], ["h"]),
        helper.make_node("Gather", ["image_size", "idx_w"], ["w"]),
        helper.make_node("Max", ["h", "w"], ["side"]),
        helper.make_node("Div", ["w", "side"], ["w_rel"]),
        helper.make_node("Div", ["h", "side"], ["h_rel"]),
        helper.make_node("Unsqueeze", ["w_rel", "axis0"], ["w_rel1"]),
        helper.make_node("Unsqueeze", ["h_rel", "axis0"], ["h_rel1"]),
        helper.make_node("Concat", ["zero2", "w_rel1", "h_rel1"], ["whole_flat"], axis=0),
        helper.make_node("Reshape", ["whole_flat", "shape_1x4"], ["whole_box"]),
    ]
    return inits, nodes


SOURCE_F = helper.make_node("Cast", ["crop_source"], ["src_f"], to=TensorProto.FLOAT)  # once per graph, read by every cut


def _cut_nodes(rows_norm: str, out: str, prefix: str = "") -> tuple[list, list]:
    """Crops of the rows ``rows_norm`` [N, 4] (normalised to the padded square) from ``src_f`` (the crop source
    as floats: SOURCE_F); ``prefix`` names the intermediate tensors, so one graph can cut twice."""
    inits = [_const("src_side", float(spec.CROP_SOURCE_SIZE)), _const("u8_min", 0.0), _const("u8_max", 255.0),
             _const("first_dim", [0], np.int64), _const("one_dim", [1], np.int64)]
    n = lambda name: prefix + name  # noqa: E731
    nodes = [
        helper.make_node("Mul", [rows_norm, "src_side"], [n("rois")]),
        helper.make_node("Shape", [n("rois")], [n("rois_shape")]),
        helper.make_node("Slice", [n("rois_shape"), "first_dim", "one_dim"], [n("n_rows")]),
        helper.make_node("ConstantOfShape", [n("n_rows")], [n("batch_idx")], value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
        helper.make_node("RoiAlign", ["src_f", n("rois"), n("batch_idx")], [n("crops_f")], mode="avg",
                         output_height=spec.CROP_SIZE, output_width=spec.CROP_SIZE, sampling_ratio=2,
                         spatial_scale=1.0, coordinate_transformation_mode="half_pixel"),
        helper.make_node("Round", [n("crops_f")], [n("crops_r")]),
        helper.make_node("Clip", [n("crops_r"), "u8_min", "u8_max"], [n("crops_c")]),
        helper.make_node("Cast", [n("crops_c")], [out], to=TensorProto.UINT8),
    ]
    return inits, nodes


def _jitter_nodes() -> tuple[list, list]:
    """``sel_boxes`` [M, 4] and ``whole_box`` -> ``jitter_crops`` [2(M + 1)]: each selected box moved in by
    spec.QUERY_BOX_JITTER of its width and height on each side, then each moved out, both clipped to the image
    (``rel_limits``); the whole-image row's two are its own box."""
    j = spec.QUERY_BOX_JITTER
    inits = [_const("jit_axis1", [1], np.int64), _const("jit_lo", [0], np.int64), _const("jit_mid", [2], np.int64),
             _const("jit_hi", [4], np.int64), _const("jit_step", [j, j, -j, -j])]
    nodes = [
        helper.make_node("Slice", ["sel_boxes", "jit_lo", "jit_mid", "jit_axis1"], ["jit_xy1"]),
        helper.make_node("Slice", ["sel_boxes", "jit_mid", "jit_hi", "jit_axis1"], ["jit_xy2"]),
        helper.make_node("Sub", ["jit_xy2", "jit_xy1"], ["jit_wh"]),
        helper.make_node("Concat", ["jit_wh", "jit_wh"], ["jit_wh4"], axis=1),
        helper.make_node("Mul", ["jit_wh4", "jit_step"], ["jit_move"]),  # inwards: (+dx, +dy, -dx, -dy)
    ]
    for name, op in (("jit_in", "Add"), ("jit_out", "Sub")):
        nodes += [helper.make_node(op, ["sel_boxes", "jit_move"], [name + "_raw"]),
                  helper.make_node("Max", [name + "_raw", "zero"], [name + "_pos"]),
                  helper.make_node("Min", [name + "_pos", "rel_limits"], [name])]
    nodes.append(helper.make_node("Concat", ["jit_in", "whole_box", "jit_out", "whole_box"], ["jitter_rows"], axis=0))
    i2, n2 = _cut_nodes("jitter_rows", spec.JITTER_CROPS.name, prefix="jit_")
    return inits + i2, nodes + n2


def _selection_nodes(every_row: bool) -> tuple[list, list]:
    """``det_boxes``/``det_scores`` -> ``sel_boxes`` [M, 4], ``sel_scores`` [M] of the rows passed on."""
    inits = [_const("axis0", [0], np.int64), _const("zero", 0.0)]
    if every_row:
        return inits, [helper.make_node("Squeeze", ["det_boxes", "axis0"], ["sel_boxes"]),
                       helper.make_node("Squeeze", ["det_scores", "axis0"], ["sel_scores"])]
    # NonMaxSuppression keeps a box unless a better kept one overlaps it by IoU > iou_threshold, drops
    # scores <= score_threshold, and returns the kept ones best first. Corner order (x, y) vs (y, x) does
    # not change an IoU.
    inits += [_const("axis1", [1], np.int64), _const("max_out", [spec.MAX_OBJECTS], np.int64), _const("iou_thr", [spec.MAX_OVERLAP]),
              _const("score_floor", [np.nextafter(np.float32(spec.EXTRA_MIN_SCORE), np.float32(0))]),
              _const("thr", spec.SCORE_THRESHOLD), _const("extra", spec.EXTRA_CANDIDATES, np.int64),
              _const("idx_box", [2], np.int64), _const("idx_box_end", [3], np.int64)]
    nodes = [
        helper.make_node("Squeeze", ["det_boxes", "axis0"], ["boxes_k"]),
        helper.make_node("Squeeze", ["det_scores", "axis0"], ["scores_k"]),
        helper.make_node("Unsqueeze", ["det_scores", "axis1"], ["scores_1x1xk"]),
        # overlaps are those of the boxes a caller sees: clipped to the image, not the padded square
        helper.make_node("Concat", ["w_rel1", "h_rel1", "w_rel1", "h_rel1"], ["rel_limits"], axis=0),
        helper.make_node("Max", ["boxes_k", "zero"], ["boxes_k_pos"]),
        helper.make_node("Min", ["boxes_k_pos", "rel_limits"], ["boxes_k_clip"]),
        helper.make_node("Unsqueeze", ["boxes_k_clip", "axis0"], ["boxes_1xk_clip"]),
        helper.make_node("NonMaxSuppression", ["boxes_1xk_clip", "scores_1x1xk", "max_out", "iou_thr", "score_floor"], ["nms"]),
        helper.make_node("Slice", ["nms", "idx_box", "idx_box_end", "axis1"], ["nms_idx2"]),  # [M, 1]: box index
        helper.make_node("Squeeze", ["nms_idx2", "axis1"], ["nms_idx"]),
        helper.make_node("Gather", ["scores_k", "nms_idx"], ["nms_scores"]),
        # every detection above the threshold; of the weaker ones, the first EXTRA_CANDIDATES (the client keeps a few)
        helper.make_node("Less", ["nms_scores", "thr"], ["weak"]),
        helper.make_node("Cast", ["weak"], ["weak_i"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["weak_i", "axis0"], ["weak_rank"]),
        helper.make_node("LessOrEqual", ["weak_rank", "extra"], ["within_extra"]),
        helper.make_node("Not", ["weak"], ["strong"]),
        helper.make_node("Or", ["strong", "within_extra"], ["keep"]),
        helper.make_node("Compress", ["nms_idx", "keep"], ["sel_idx"], axis=0),
        helper.make_node("Gather", ["boxes_k", "sel_idx"], ["sel_boxes"], axis=0),
        helper.make_node("Gather", ["scores_k", "sel_idx"], ["sel_scores"], axis=0),
    ]
    return inits, nodes


def _model(name: str, nodes, inits, inputs, outputs) -> onnx.ModelProto:
    seen, unique = set(), []
    for t in inits:  # helpers share a few constants
        if t.name not in seen:
            seen.add(t.name)
            unique.append(t)
    graph = helper.make_graph(nodes, name, [_value_info(t) for t in inputs], [_value_info(t) for t in outputs], initializer=unique)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.ONNX_OPSET)], producer_name="export.crop_graph")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build_crop_model(*, every_row: bool = False) -> onnx.ModelProto:
    inits, nodes = _whole_box_nodes()
    i2, n2 = _selection_nodes(every_row)
    i3, n3 = _cut_nodes("rows_norm", "crops")
    inits += i2 + i3 + [_const("thr", spec.SCORE_THRESHOLD), _const("whole_score", [spec.WHOLE_IMAGE_SCORE]),
                        _const("shape_1", [1], np.int64), _const("no_valid", [0.0])]
    if every_row:
        n2.append(helper.make_node("Concat", ["w_rel1", "h_rel1", "w_rel1", "h_rel1"], ["rel_limits"], axis=0))
    i4, n4 = _jitter_nodes()
    inits += i4
    nodes += n2 + [helper.make_node("Concat", ["sel_boxes", "whole_box"], ["rows_norm"], axis=0), SOURCE_F] + n3 + n4 + [
        # boxes in original pixels, clipped to the image
        helper.make_node("Mul", ["rows_norm", "side"], ["boxes_raw"]),
        helper.make_node("Mul", ["rel_limits", "side"], ["px_limits"]),
        helper.make_node("Max", ["boxes_raw", "zero"], ["boxes_pos"]),
        helper.make_node("Min", ["boxes_pos", "px_limits"], ["boxes"]),
        # validity: detections above threshold; the whole image only when none is (a leading 0 keeps the
        # max defined when no detection was selected)
        helper.make_node("GreaterOrEqual", ["sel_scores", "thr"], ["det_valid"]),
        helper.make_node("Cast", ["det_valid"], ["det_valid_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["no_valid", "det_valid_f"], ["det_valid_f0"], axis=0),
        helper.make_node("ReduceMax", ["det_valid_f0"], ["any_valid_f"], keepdims=0),
        helper.make_node("Cast", ["any_valid_f"], ["any_valid"], to=TensorProto.BOOL),
        helper.make_node("Not", ["any_valid"], ["none_valid"]),
        helper.make_node("Reshape", ["none_valid", "shape_1"], ["whole_valid"]),
        helper.make_node("Concat", ["det_valid", "whole_valid"], ["valid"], axis=0),
        helper.make_node("Concat", ["sel_scores", "whole_score"], ["scores"], axis=0),
    ]
    return _model("crop", nodes, inits, spec.CROP.inputs, spec.CROP.outputs)


def build_whole_crop_model() -> onnx.ModelProto:
    inits, nodes = _whole_box_nodes()
    i2, n2 = _cut_nodes("whole_box", "crops")
    return _model("whole_crop", nodes + [SOURCE_F] + n2, inits + i2, spec.WHOLE_CROP.inputs, spec.WHOLE_CROP.outputs)
