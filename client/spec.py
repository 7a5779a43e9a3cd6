"""The one place that owns every tensor name, dtype and shape of the served pipeline.

The ONNX exporter (export/onnx_export.py), the crop-graph builder (export/crop_graph.py) and the
config.pbtxt generator (export/repository.py) all read this module; the client reads the same names
back from the server's model config at run time and checks them against this contract.

Pipeline (ensemble ``retrieval``)::

    image_bytes ─► preprocess ─► det_image ─► detector ─► det_boxes, det_scores ─┐
                              └► crop_source, image_size ────────────────────────┴► crop
    crop ─► crops ─► classifier ─► fine_class, category, category_score
               └──► embedder   ─► embeddings
    crop ─► boxes, scores, valid

Every per-object output has ``MAX_OBJECTS + 1`` rows: rows ``0..K-1`` are the detector's top-K
boxes (``valid`` marks those above the score threshold) and row ``K`` is always the whole image.
Row K is ``valid`` only when no detection is, so a caller that keeps the valid rows always gets at
least one object (the whole image) and zero detections never break a step.

Pure Python on purpose: importing it needs neither torch nor tritonclient.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Geometry and sizes -------------------------------------------------------------------------------
DET_SIZE = 320  # detector input side (padded-square image resized)
CROP_SOURCE_SIZE = 640  # side of the padded-square image that crops are cut from
CROP_SIZE = 160  # classifier / embedder input side
MAX_OBJECTS = 8  # K: fixed number of detector outputs
NUM_ROWS = MAX_OBJECTS + 1  # K detections + the whole image
EMBED_DIM = 256
EMBEDDER_VERSION = 1  # Qdrant collection products_v<N>; bump when embeddings change meaning
SCORE_THRESHOLD = 0.30  # detector operating threshold (baked into the crop graph)
# search filters by the object's category only when the classifier is this sure (export.evaluate reports
# Recall with the filter at several thresholds); below it, the whole catalog is searched
CATEGORY_FILTER_MIN_SCORE = 0.80
PAD_VALUE = 114  # grey used to pad images to a square
WHOLE_IMAGE_SCORE = 1.0  # score reported for row K
ONNX_OPSET = 17

# All image tensors are uint8 RGB, NCHW; the models normalise internally with these statistics.
# EfficientNet-Lite was trained on (x - 127) / 128.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)

ENSEMBLE = "retrieval"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton data type name without the TYPE_ prefix: UINT8, FP32, BOOL, STRING, INT64
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}, expected one of {sorted(_DTYPES)}")


# Triton config name -> (numpy dtype name, ONNX TensorProto name, tritonclient wire name)
_DTYPES = {
    "UINT8": ("uint8", "UINT8", "UINT8"),
    "FP32": ("float32", "FLOAT", "FP32"),
    "BOOL": ("bool", "BOOL", "BOOL"),
    "STRING": ("object", "STRING", "BYTES"),
    "INT64": ("int64", "INT64", "INT64"),
}


def numpy_dtype(dtype: str) -> str:
    return _DTYPES[dtype][0]


def onnx_dtype(dtype: str) -> str:
    return _DTYPES[dtype][1]


def wire_dtype(dtype: str) -> str:
    return _DTYPES[dtype][2]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "onnx" (served by onnxruntime) or "python" (Python backend)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    description: str = ""
    parameters: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> Tensor:
        return _find(self.inputs, name, self.name)

    def output(self, name: str) -> Tensor:
        return _find(self.outputs, name, self.name)


def _find(tensors: tuple[Tensor, ...], name: str, model: str) -> Tensor:
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"model {model!r} has no tensor {name!r}; it has {[t.name for t in tensors]}")


K = MAX_OBJECTS
IMAGE_BYTES = Tensor("image_bytes", "STRING", (1,))
DET_IMAGE = Tensor("det_image", "UINT8", (-1, 3, DET_SIZE, DET_SIZE))
CROP_SOURCE = Tensor("crop_source", "UINT8", (1, 3, CROP_SOURCE_SIZE, CROP_SOURCE_SIZE))
IMAGE_SIZE = Tensor("image_size", "FP32", (2,))  # original (height, width) in pixels
DET_BOXES = Tensor("det_boxes", "FP32", (-1, K, 4))  # x1, y1, x2, y2 in [0, 1] of the padded square
DET_SCORES = Tensor("det_scores", "FP32", (-1, K))
CROPS = Tensor("crops", "UINT8", (-1, 3, CROP_SIZE, CROP_SIZE))
BOXES = Tensor("boxes", "FP32", (NUM_ROWS, 4))  # x1, y1, x2, y2 in original-image pixels
SCORES = Tensor("scores", "FP32", (NUM_ROWS,))
VALID = Tensor("valid", "BOOL", (NUM_ROWS,))
FINE_CLASS = Tensor("fine_class", "STRING", (-1,))
CATEGORY = Tensor("category", "STRING", (-1,))
CATEGORY_SCORE = Tensor("category_score", "FP32", (-1,))
EMBEDDINGS = Tensor("embeddings", "FP32", (-1, EMBED_DIM))

PREPROCESS = ModelSpec(
    "preprocess", "python", (IMAGE_BYTES,),
    (Tensor("det_image", "UINT8", (1, 3, DET_SIZE, DET_SIZE)), CROP_SOURCE, IMAGE_SIZE),
    "Decodes encoded image bytes (JPEG, PNG, WebP ...), applies EXIF rotation, pads to a square "
    "and resizes to the detector and crop-source sizes.",
    {"pad_value": str(PAD_VALUE)},
)
DETECTOR = ModelSpec(
    "detector", "onnx", (DET_IMAGE,), (DET_BOXES, DET_SCORES),
    "Class-agnostic product detector: centre heatmap on an EfficientNet-Lite0 backbone, fixed top-K (no NMS op).",
)
CROP = ModelSpec(
    "crop", "onnx", (CROP_SOURCE, Tensor("det_boxes", "FP32", (1, K, 4)), Tensor("det_scores", "FP32", (1, K)), IMAGE_SIZE),
    (Tensor("crops", "UINT8", (NUM_ROWS, 3, CROP_SIZE, CROP_SIZE)), BOXES, SCORES, VALID),
    "RoiAlign crops of the K boxes plus the whole image, boxes in original pixels, validity mask.",
)
CLASSIFIER = ModelSpec(
    "classifier", "onnx", (CROPS,), (FINE_CLASS, CATEGORY, CATEGORY_SCORE),
    "Fine-class classifier whose fine classes are merged into categories inside the graph.",
)
EMBEDDER = ModelSpec(
    "embedder", "onnx", (CROPS,), (EMBEDDINGS,),
    "Metric-learning embedder: L2-normalised vectors.",
)

# Order = execution order of the ensemble; every input is produced by an earlier step or the request.
STEPS = (PREPROCESS, DETECTOR, CROP, CLASSIFIER, EMBEDDER)
MODELS = {m.name: m for m in STEPS}
ONNX_MODELS = tuple(m for m in STEPS if m.kind == "onnx")
TRAINED_MODELS = (DETECTOR, CLASSIFIER, EMBEDDER)

ENSEMBLE_INPUTS = (IMAGE_BYTES,)
ENSEMBLE_OUTPUTS = (
    Tensor("boxes", "FP32", (NUM_ROWS, 4)),
    Tensor("scores", "FP32", (NUM_ROWS,)),
    Tensor("valid", "BOOL", (NUM_ROWS,)),
    Tensor("fine_class", "STRING", (NUM_ROWS,)),
    Tensor("category", "STRING", (NUM_ROWS,)),
    Tensor("category_score", "FP32", (NUM_ROWS,)),
    Tensor("embeddings", "FP32", (NUM_ROWS, EMBED_DIM)),
)


def collection_name(version: int = EMBEDDER_VERSION) -> str:
    return f"products_v{version}"
