"""The one place that owns every tensor name, dtype and shape of the served pipeline.

The ONNX exporter (export/onnx_export.py), the crop-graph builder (export/crop_graph.py) and the
config.pbtxt generator (export/repository.py) all read this module; the client reads the same names
back from the server's model config at run time and checks them against this contract.

Besides tensors it owns the facts every side shares: image file suffixes, the default Triton URL,
where a model's ONNX file lives in the repository, and the trained models' names.

Pipeline (ensemble ``retrieval``)::

    image_bytes ─► preprocess ─► det_image ─► detector ─► det_boxes, det_scores ─┐
                              ├► crop_source ──┘ (its second scale)               │
                              └► crop_source, image_size ────────────────────────┴► crop
    crop ─► crops, jitter_crops ─► query_features ─► features ─► classifier ─► fine_class, category, category_score
               │                                           └──► embedder   ─► embeddings, embedder_id
               └──────────────────────────────────────────────► embedder (the colour part)
    crop ─► boxes, scores, valid

The crop step passes on only the rows worth reporting (the row policy below): every detection above
SCORE_THRESHOLD (``valid``), then at most EXTRA_CANDIDATES weaker ones scoring >= EXTRA_MIN_SCORE, none
overlapping a better one by IoU > MAX_OVERLAP, in score order; then always the whole image, last. A search
reports the valid rows and at most EXTRA_OBJECTS of the weaker ones: those most like a catalog product
(client.search.select_rows). So
every per-object output has N rows, 1 <= N <= MAX_OBJECTS + 1, and the backbone (one shared pass for
the classifier and the embedder) runs on those rows only (in ``retrieval``, on each row's three crops). The whole-image row is ``valid`` only when
no detection is, so a caller that keeps the valid rows always gets at least one object.

``retrieval`` is the search side. Its crop step also cuts each detection row at its box shrunk and grown by
QUERY_BOX_JITTER of its width and height on each side (``jitter_crops``), and ``query_features`` gives each row
the mean of the three crops' pooled vectors: a detected box is seldom exact, and the mean is steadier than the
one crop (measured in docs/measurements.md, "Box jitter on the query side"). ``retrieval_catalog`` is the same chain with
the plain ``features`` step (one crop per row): client.catalog indexes with it, because a catalog image's box is
tight (one product on white) and jitter there loses. The whole-image row's jitter crops are its own crop, so its
features are the plain ones in both (bit for bit on the CPU; a GPU's engines for the two steps may differ in the
last bits).

A third ensemble, ``whole_image`` (preprocess -> whole_crop -> features -> embedder), gives the
whole-image embedding alone (the last row of ``retrieval``'s and ``retrieval_catalog``'s, bit for bit) without
the detector: dedup and anything else that embeds whole images use it.

Pure Python on purpose, with no import from the project: importing it needs neither torch nor
tritonclient, and export.repository copies it (with imaging.py) next to the Python model that needs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Geometry and sizes -------------------------------------------------------------------------------
DET_SIZE = 320  # detector input side (padded-square image resized)
CROP_SOURCE_SIZE = 640  # side of the padded-square image that crops are cut from
CROP_SIZE = 160  # classifier / embedder input side
MAX_OBJECTS = 8  # K: fixed number of detector outputs
NUM_ROWS = MAX_OBJECTS + 1  # K detections + the whole image
CNN_EMBED_DIM = 256  # the learned-whitening projection of the backbone's pooled vector
# The colour part of the embedding (export.models.ColourHistogram): hue x saturation x value chromatic bins
# plus grey bins by value, Hellinger-mapped, fused with the CNN part as the vector's last COLOUR_DIM entries
COLOUR_HUE_BINS, COLOUR_SAT_BINS, COLOUR_VAL_BINS, COLOUR_GREY_BINS = 12, 2, 2, 4
COLOUR_DIM = COLOUR_HUE_BINS * COLOUR_SAT_BINS * COLOUR_VAL_BINS + COLOUR_GREY_BINS
# the colour part's share of the cosine similarity: fused = (1 - w) * CNN cosine + w * Bhattacharyya coefficient.
# Chosen with export.evaluate's held-out products (see docs/measurements.md, "What the embedding holds")
COLOUR_WEIGHT = 0.25
EMBED_DIM = CNN_EMBED_DIM + COLOUR_DIM
EMBEDDER_VERSION = 2  # Qdrant collection products_v<N>; bump when embeddings change meaning
SCORE_THRESHOLD = 0.30  # detector operating threshold (baked into the crop graph)
# The row policy (baked into the crop graph): which detections every caller gets, besides the valid ones.
# The detector is under-confident on unseen domains: rows below SCORE_THRESHOLD often hold the product.
# Chosen with `python -m export.evaluate` ("Row policy sweep": extra 0-3, floor 0.05/0.1/0.2, IoU 0.3/0.5/0.7)
# as round values that win clearly (quick profile, 2026-11-23): held-out products with a box 0.872 -> 0.924,
# R@1 0.385 -> 0.418 for 2.0 -> 2.65 objects per photo; a third extra row or a 0.05 floor adds <= 0.007 R@1.
EXTRA_OBJECTS = 2  # a search reports at most this many detections below the threshold besides the valid ones
EXTRA_MIN_SCORE = 0.10  # ... each scoring at least this
# The crop graph passes on up to EXTRA_CANDIDATES such weaker rows, and a search keeps the EXTRA_OBJECTS of them with
# the highest score + EXTRA_MATCH_WEIGHT x the row's best cosine to the catalog (a weak row that looks like a catalog
# product is more likely one than a slightly higher-scored row that looks like nothing there). Set from a replay of
# issue 9's checks (`python -m bench.photo_search` photos, seed 4242; weights 1 and 2 alike, the cosine alone boxes fewer),
# then checked on seed 5151 and with `python -m export.evaluate` (docs/measurements.md, "Thirty-second round: weak rows
# chosen by the catalog (shipped)").
EXTRA_CANDIDATES = 4
EXTRA_MATCH_WEIGHT = 1.0
MAX_OVERLAP = 0.5  # IoU above which a row repeats a box already taken (the detector has no NMS, only a 3x3 max-pool)
FEATURE_DIM = 1280  # the shared backbone's pooled vector (EfficientNet-Lite0 head)
# the search ensemble's box jitter (export/crop_graph.py, QUERY_FEATURES): each detection row is also cut at its
# box moved in and out by this share of its width and height on each side, and its features are the mean of the
# three crops'. Set before measuring, then checked with `python -m export.evaluate`: it gains on seeds 1234 and 777,
# and a sweep on seed 1234 (0.04 / 0.06 / 0.08 / 0.1 / 0.15) puts 0.06-0.15 within a few objects of each other
# (docs/measurements.md "Box jitter on the query side")
QUERY_BOX_JITTER = 0.06
# search narrows to the object's category only when the mean of the classifier's category_score and the
# category's share among the object's nearest catalog products reaches this (client/category.py; export.evaluate
# reports Recall with the filter at several thresholds); below it, the whole catalog is searched
CATEGORY_FILTER_MIN_SCORE = 0.80
PAD_VALUE = 114  # grey used to pad images to a square
WHOLE_IMAGE_SCORE = 1.0  # score reported for row K
ONNX_OPSET = 17

# All image tensors are uint8 RGB, NCHW; the models normalise internally with these statistics.
# EfficientNet-Lite was trained on (x - 127) / 128.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)

ENSEMBLE = "retrieval"  # the search side (box jitter)
CATALOG_ENSEMBLE = "retrieval_catalog"  # the same outputs for indexing a catalog image (no jitter)
DEFAULT_TRITON_URL = "127.0.0.1:8001"  # gRPC; overridden by $TRITON_URL or --triton-url
ONNX_FILENAME = "model.onnx"
# files the CLIs read as images (Pillow decodes them; animated ones give their first frame)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def onnx_file(repository: str | Path, model: str) -> Path:
    """Where a model's ONNX file lives in a Triton repository (version 1)."""
    return Path(repository) / model / "1" / ONNX_FILENAME


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton data type name without the TYPE_ prefix: UINT8, FP32, BOOL, STRING, INT64
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}, expected one of {sorted(_DTYPES)}")


# Triton config name -> ONNX TensorProto name
_DTYPES = {"UINT8": "UINT8", "FP32": "FLOAT", "BOOL": "BOOL", "STRING": "STRING", "INT64": "INT64"}


def onnx_dtype(dtype: str) -> str:
    return _DTYPES[dtype]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "onnx" (served by onnxruntime) or "python" (Python backend)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    description: str = ""
    parameters: dict[str, str] = field(default_factory=dict)


K = MAX_OBJECTS
IMAGE_BYTES = Tensor("image_bytes", "STRING", (1,))
DET_IMAGE = Tensor("det_image", "UINT8", (-1, 3, DET_SIZE, DET_SIZE))
CROP_SOURCE = Tensor("crop_source", "UINT8", (1, 3, CROP_SOURCE_SIZE, CROP_SOURCE_SIZE))
# the same padded square, as the detector reads it (batched like det_image): its second scale is resized from it
DET_SOURCE = Tensor(CROP_SOURCE.name, "UINT8", (-1, 3, CROP_SOURCE_SIZE, CROP_SOURCE_SIZE))
IMAGE_SIZE = Tensor("image_size", "FP32", (2,))  # original (height, width) in pixels
DET_BOXES = Tensor("det_boxes", "FP32", (-1, K, 4))  # x1, y1, x2, y2 in [0, 1] of the padded square
DET_SCORES = Tensor("det_scores", "FP32", (-1, K))
CROPS = Tensor("crops", "UINT8", (-1, 3, CROP_SIZE, CROP_SIZE))
# each row of crops cut again at its box shrunk, then each at its box grown, by QUERY_BOX_JITTER (2N rows: the N
# shrunk ones, then the N grown ones; the whole-image row's two are its own crop)
JITTER_CROPS = Tensor("jitter_crops", "UINT8", (-1, 3, CROP_SIZE, CROP_SIZE))
FEATURES = Tensor("features", "FP32", (-1, FEATURE_DIM))  # the shared backbone's pooled vector of each crop
BOXES = Tensor("boxes", "FP32", (-1, 4))  # x1, y1, x2, y2 in original-image pixels
SCORES = Tensor("scores", "FP32", (-1,))
VALID = Tensor("valid", "BOOL", (-1,))
FINE_CLASS = Tensor("fine_class", "STRING", (-1,))
CATEGORY = Tensor("category", "STRING", (-1,))
CATEGORY_SCORE = Tensor("category_score", "FP32", (-1,))
EMBEDDINGS = Tensor("embeddings", "FP32", (-1, EMBED_DIM))
# identity of the served embedder weights ("v<EMBEDDER_VERSION>-<hash of its weights>"), a constant of the
# graph: callers (dedup calibration) learn which embedder answered from the server, not from files
EMBEDDER_ID = Tensor("embedder_id", "STRING", (1,))

PREPROCESS = ModelSpec(
    "preprocess", "python", (IMAGE_BYTES,),
    (Tensor("det_image", "UINT8", (1, 3, DET_SIZE, DET_SIZE)), CROP_SOURCE, IMAGE_SIZE),
    "Decodes encoded image bytes (JPEG, PNG, WebP ...), applies EXIF rotation, pads to a square "
    "and resizes to the detector and crop-source sizes.",
)
DETECTOR = ModelSpec(
    "detector", "onnx", (DET_IMAGE, DET_SOURCE), (DET_BOXES, DET_SCORES),
    "Class-agnostic product detector: centre heatmaps on EfficientNet-Lite0 and Lite2 backbones (the mean of heads on "
    "each; the second look on Lite0 alone), averaged over the image and "
    "its mirror (flip test), fixed top-K peaks, each box then refined from features sampled around it (grid_sample); "
    "the crop source (the same padded square at 640 px) resized to 512 px adds its boxes with 0.35 times their score, "
    "merged by greedy suppression in tensor ops (no NMS op).",
)
CROP = ModelSpec(
    "crop", "onnx", (CROP_SOURCE, Tensor("det_boxes", "FP32", (1, K, 4)), Tensor("det_scores", "FP32", (1, K)), IMAGE_SIZE),
    (CROPS, BOXES, SCORES, VALID, JITTER_CROPS),
    "Selects the rows worth reporting (the row policy: valid detections, a few weaker ones, no duplicates, score order, "
    "then the whole image) and cuts them (RoiAlign); boxes in original pixels, validity mask; each row also cut "
    "at its box shrunk and grown (the search side's box jitter).",
)
WHOLE_CROP = ModelSpec(
    "whole_crop", "onnx", (CROP_SOURCE, IMAGE_SIZE), (CROPS,),
    "The whole-image crop alone (the crop step's last row, cut the same way).",
)
BACKBONE = ModelSpec(
    "features", "onnx", (CROPS,), (FEATURES,),
    "The frozen ImageNet EfficientNet-Lite0 backbone, run once per crop for the classifier and the embedder.",
)
QUERY_FEATURES = ModelSpec(
    "query_features", "onnx", (CROPS, JITTER_CROPS), (FEATURES,),
    "The same frozen backbone on each row's crop and its two jitter crops (one batch): the mean of the three pooled "
    "vectors (the whole-image row: its own vector, bit for bit).",
)
CLASSIFIER = ModelSpec(
    "classifier", "onnx", (FEATURES,), (FINE_CLASS, CATEGORY, CATEGORY_SCORE),
    "Fine-class classifier head whose fine classes are merged into categories inside the graph.",
)
EMBEDDER = ModelSpec(
    "embedder", "onnx", (FEATURES, CROPS), (EMBEDDINGS, EMBEDDER_ID),
    "Embedder head on the pooled vector (a linear projection fitted by learned whitening), fused with a colour histogram of the crop: "
    "L2-normalised vectors, and the identity of its weights (and the backbone's).",
)


@dataclass(frozen=True)
class Ensemble:
    name: str
    steps: tuple[ModelSpec, ...]  # execution order; every input is produced by an earlier step or the request
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    description: str = ""


# Order = execution order of the ensemble; every input is produced by an earlier step or the request.
STEPS = (PREPROCESS, DETECTOR, CROP, QUERY_FEATURES, CLASSIFIER, EMBEDDER)
CATALOG_STEPS = (PREPROCESS, DETECTOR, CROP, BACKBONE, CLASSIFIER, EMBEDDER)
TRAINED_MODELS = (DETECTOR, CLASSIFIER, EMBEDDER)  # trained by export.build; crop, whole_crop are built graphs, features is frozen

ENSEMBLE_INPUTS = (IMAGE_BYTES,)
ENSEMBLE_OUTPUTS = (BOXES, SCORES, VALID, FINE_CLASS, CATEGORY, CATEGORY_SCORE, EMBEDDINGS, EMBEDDER_ID)
WHOLE_IMAGE = "whole_image"
ENSEMBLES = (
    Ensemble(ENSEMBLE, STEPS, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS,
             "Objects of one image: boxes, categories and embeddings of the reported rows, the whole image last "
             "(the search side: each detection row's features averaged over its box jitter)."),
    Ensemble(CATALOG_ENSEMBLE, CATALOG_STEPS, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS,
             "The same objects for a catalog image, each row from its own crop alone (client.catalog indexes with it)."),
    Ensemble(WHOLE_IMAGE, (PREPROCESS, WHOLE_CROP, BACKBONE, EMBEDDER), (IMAGE_BYTES,), (EMBEDDINGS, EMBEDDER_ID),
             "The whole-image embedding of one image (one row), without the detector."),
)
# every served model once, in the order they are first used
MODELS = tuple({m.name: m for e in ENSEMBLES for m in e.steps}.values())
ONNX_MODELS = tuple(m for m in MODELS if m.kind == "onnx")


def collection_name(version: int = EMBEDDER_VERSION) -> str:
    return f"products_v{version}"
