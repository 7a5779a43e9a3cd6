"""Training data for the quick and full profiles, and features cached through a frozen backbone.

The backbone is frozen in both profiles' first stage, so its outputs are computed once with
onnxruntime (6x faster than eager torch on this CPU) and the heads train on the cached tensors.
"""
from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from client import imaging, spec
from export.crop_graph import build_crop_model
from export.products import Product, load_cutouts, product_split, synthetic_products
from client.imaging import list_images
from export.scenes import Backgrounds, detector_scene, make_scene


@dataclass
class DataConfig:
    synthetic_per_class: int = 6
    scenes: int = 1000
    catalog_views: int = 200  # detector samples of a product alone on white
    detector_scenes: int = 0  # more scenes for the detector only, of varied products and pseudo-objects (scenes.detector_scene)
    val_fraction: float = 0.15
    photoset: str | None = None  # folder with cutouts/ and photos/ (e.g. ../shared/datasets/photoset)
    seed: int = 0


def held_out_background(path: Path) -> bool:
    """20% of background photos never appear in training (chosen by name hash: stable across runs)."""
    return int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % 5 == 0


@dataclass
class Sources:
    products: list[Product]  # training products; test products are never here
    train_backgrounds: list[Path]
    eval_backgrounds: list[Path]
    errors: list[str] = field(default_factory=list)
    held_out: list[Product] = field(default_factory=list)  # split "test": only export.evaluate sees them

    @property
    def fine_classes(self) -> list[str]:
        return sorted({p.fine_class for p in self.products})

    @property
    def merge(self) -> dict[str, str]:
        return {p.fine_class: p.category for p in self.products}


def load_sources(cfg: DataConfig) -> Sources:
    products = synthetic_products(cfg.synthetic_per_class, seed=cfg.seed)
    errors: list[str] = []
    bgs: list[Path] = []
    if cfg.photoset:
        root = Path(cfg.photoset)
        cut_dir, photo_dir = root / "cutouts", root / "photos"
        if cut_dir.is_dir():
            cuts, errors = load_cutouts(cut_dir)
            products += cuts
        if photo_dir.is_dir():
            bgs = list_images(photo_dir)
    train = [p for p in products if product_split(p.product_id) != "test"]
    test = [p for p in products if product_split(p.product_id) == "test"]
    return Sources(train, [p for p in bgs if not held_out_background(p)], [p for p in bgs if held_out_background(p)], errors, test)


class BackboneRunner:
    """The frozen backbone (``name``: an EfficientNet-Lite of models.BACKBONE_WEIGHTS) as an onnxruntime session
    (exported once per build directory)."""

    OUTPUTS = ("f8", "f16", "f32", "pooled")

    def __init__(self, onnx_path: Path, name: str = "efficientnet-lite0"):
        if onnx_path.exists():
            self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            if tuple(o.name for o in self.session.get_outputs()) == self.OUTPUTS:
                return
        import torch

        from export.models import Backbone

        class AllMaps(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = Backbone(name=name).eval()

            def forward(self, x):
                f8, f16, f32 = self.net.detector_maps(x, with8=True)
                return f8, f16, f32, self.net.head(f32).mean(dim=(2, 3))

        dummy = torch.zeros(1, 3, spec.CROP_SIZE, spec.CROP_SIZE, dtype=torch.uint8)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(AllMaps().eval(), (dummy,), str(onnx_path), input_names=["x"], output_names=list(self.OUTPUTS),
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=spec.ONNX_OPSET, dynamo=False)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray, batch: int = 16, desc: str = "backbone", outputs=("f16", "f32", "pooled")) -> list[np.ndarray]:
        chunks: list[list[np.ndarray]] = [[] for _ in outputs]
        for i in tqdm(range(0, len(images), batch), desc=desc, unit="batch", leave=False):
            out = self.session.run(list(outputs), {"x": images[i:i + batch]})
            for c, o in zip(chunks, out):
                c.append(o.astype(np.float16) if o.ndim == 4 else o)
        return [np.concatenate(c) for c in chunks]


@dataclass
class DetectorData:
    images: np.ndarray  # [N,3,DET,DET] uint8
    boxes: list[np.ndarray]  # per image [M,4] normalised to the padded square
    val: np.ndarray  # bool [N]


@dataclass
class CropData:
    crops: np.ndarray  # [N,3,CROP,CROP] uint8
    product: np.ndarray  # [N] index into Sources.products
    is_catalog: np.ndarray  # [N] bool
    val: np.ndarray  # [N] bool


class CropCutter:
    """Runs the served crop graph, so training crops are exactly the crops the server makes."""

    def __init__(self, threads: int = 1) -> None:
        # one thread while another process draws the detector-only scenes (DetectorScenes): a second thread
        # spins and takes that process's core. generate cuts the catalog views on two, once that process is
        # done (one cut: 73 ms on one thread, 43 ms on two). The crops are the same on any number of threads.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(build_crop_model().SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, src: np.ndarray, size: np.ndarray, boxes_norm: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(boxes_norm), spec.MAX_OBJECTS):
            chunk = boxes_norm[i:i + spec.MAX_OBJECTS]
            b = np.zeros((1, spec.MAX_OBJECTS, 4), np.float32)
            b[0, :len(chunk)] = chunk
            crops = self.session.run([spec.CROPS.name], {spec.CROP_SOURCE.name: src, spec.DET_BOXES.name: b,
                                                         spec.DET_SCORES.name: np.ones((1, spec.MAX_OBJECTS), np.float32),
                                                         spec.IMAGE_SIZE.name: size})[0]
            out.append(crops[:len(chunk)])
        return np.concatenate(out)


def _norm(box, size: np.ndarray) -> np.ndarray:
    return np.asarray(box, np.float32) / float(max(size))


def _scene_boxes(scene, size: np.ndarray) -> np.ndarray:
    """The scene's object boxes normalised to the letterboxed square, [M, 4] (M may be 0)."""
    return np.stack([_norm(o.box, size) for o in scene.objects]) if scene.objects else np.zeros((0, 4), np.float32)


def _jitter(box: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-amount, amount, 4) * np.array([w, h, w, h])
    return np.clip(box + d, 0, 1).astype(np.float32)


def detector_scenes(cfg: DataConfig, sources: Sources, out: np.ndarray, position: int = 0) -> list[np.ndarray]:
    """``cfg.detector_scenes`` scenes of varied products and pseudo-objects (scenes.detector_scene) from their own
    random stream (seed + 2): their detector images are written into ``out`` [n, 3, DET, DET], their boxes returned."""
    vrng = np.random.default_rng(cfg.seed + 2)
    bgs = Backgrounds(sources.train_backgrounds)
    boxes = []
    for i in tqdm(range(cfg.detector_scenes), desc="detector scenes", unit="scene", position=position):
        scene = detector_scene(sources.products, bgs, vrng)
        det, _, size = imaging.letterbox(scene.image)
        out[i] = det[0]
        boxes.append(_scene_boxes(scene, size))
    return boxes


def can_fork() -> bool:
    """Whether a second process can draw scenes beside this one: ``fork`` exists and this process may use 2+ CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus > 1 and "fork" in multiprocessing.get_all_start_methods()


FORK_MIN_SCENES = 100  # fewer detector scenes are drawn in this process: a fork costs more than they do


class DetectorScenes:
    """``detector_scenes`` drawn in a forked process, into memory shared with it, while the caller draws the other
    scenes (both are single-threaded image work; on 2 cores this took 3.6 min off a quick build, docs/measurements.md,
    "Twenty-ninth round"). Where ``can_fork`` says no, or for fewer than FORK_MIN_SCENES, they are drawn in this
    process when ``result`` is called. The scenes are the same either way: their random stream is their own."""

    def __init__(self, cfg: DataConfig, sources: Sources) -> None:
        self.cfg, self.sources, self.proc = cfg, sources, None
        n, side = cfg.detector_scenes, spec.DET_SIZE
        self.buffer = mmap.mmap(-1, max(1, n * 3 * side * side))  # anonymous and shared: the child's writes are seen here
        self.images = np.frombuffer(self.buffer, np.uint8, n * 3 * side * side).reshape(n, 3, side, side)
        if n >= FORK_MIN_SCENES and can_fork():
            ctx = multiprocessing.get_context("fork")
            self.conn, child = ctx.Pipe(duplex=False)
            self.proc = ctx.Process(target=self._child, args=(child,), daemon=True)
            self.proc.start()
            child.close()

    def _child(self, conn) -> None:
        self.conn.close()  # the parent's end: were it left open here, a parent gone before reading would not be noticed
        try:
            conn.send(("ok", detector_scenes(self.cfg, self.sources, self.images, position=1)))
        except BaseException:  # noqa: BLE001 - the parent raises it
            conn.send(("error", traceback.format_exc()))
        finally:
            conn.close()

    def result(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """(images [n, 3, DET, DET], boxes), waiting for the other process if there is one."""
        if self.proc is None:
            return self.images, detector_scenes(self.cfg, self.sources, self.images)
        try:
            status, payload = self.conn.recv()
        except EOFError:  # it died without a word (killed, out of memory)
            status, payload = "error", None
        self.proc.join()
        if status != "ok":
            raise RuntimeError(f"drawing the detector scenes failed:\n{payload or f'the process drawing them exited with code {self.proc.exitcode}'}")
        return self.images, payload

    def close(self) -> None:
        """Stops the other process if it is still drawing (the caller failed before ``result``)."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def generate(cfg: DataConfig, sources: Sources, with_crops: bool = True) -> tuple[DetectorData, CropData | None]:
    """Scenes for the detector, and crops (scene objects + catalog views) for classifier and embedder.
    ``with_crops=False`` gives the same scenes without cutting or rendering any crop (CropData None): it draws
    the same random numbers, so the scenes do not change."""
    rng = np.random.default_rng(cfg.seed + 1)
    bgs = Backgrounds(sources.train_backgrounds)
    # detector-only scenes come from their own random stream, so another process draws them meanwhile
    others = DetectorScenes(cfg, sources)
    try:
        index = {p.product_id: i for i, p in enumerate(sources.products)}
        cutter = CropCutter() if with_crops else None
        det_images, det_boxes, det_val = [], [], []
        crops, crop_prod, crop_cat, crop_val = [], [], [], []
        n_val = int(cfg.scenes * cfg.val_fraction)
        for i in tqdm(range(cfg.scenes), desc="scenes", unit="scene"):
            scene = make_scene(sources.products, bgs, rng)
            det, src, size = imaging.letterbox(scene.image)
            boxes = _scene_boxes(scene, size)
            is_val = i < n_val
            det_images.append(det[0]); det_boxes.append(boxes); det_val.append(is_val)
            if len(boxes):
                jittered = np.stack([_jitter(b, rng, 0.06) for b in boxes])
                if with_crops:
                    crops.append(cutter(src, size, jittered))
                    crop_prod += [index[o.product_id] for o in scene.objects]
                    crop_cat += [False] * len(boxes)
                    crop_val += [is_val] * len(boxes)
        # the detector-only scenes go before the catalog views, as when they were drawn in this process. They are
        # collected here, so the views are cut on both cores: the other process draws no crops and is usually
        # done by now (3,000 scenes: 4:23 against 6:06 for these)
        n_main = len(det_images)
        more_images, more_boxes = others.result()
        if with_crops and others.proc is not None:
            cutter = CropCutter(threads=2)
        # catalog views: every product on white, for the detector (random scale) and for the crop models
        for j, p in enumerate(tqdm(sources.products, desc="catalog", unit="product", disable=not with_crops)):
            for v in range(3):
                margin = float(rng.uniform(0.04, 0.2))
                if not with_crops:  # only the random numbers a view draws (_jitter draws four whatever the box)
                    if v:
                        _jitter(np.zeros(4, np.float32), rng, 0.05)
                    continue
                img, box = p.catalog_image_and_box(side=320, margin=margin)
                det, src, size = imaging.letterbox(img)
                b = _norm(box, size)
                views = np.stack([b if v == 0 else _jitter(b, rng, 0.05)])
                crops.append(cutter(src, size, views))
                crop_prod.append(j); crop_cat.append(True); crop_val.append(False)
        for _ in range(cfg.catalog_views):
            p = sources.products[int(rng.integers(len(sources.products)))]
            img, box = p.catalog_image_and_box(side=int(rng.integers(240, 520)), margin=float(rng.uniform(0.02, 0.3)))
            det, src, size = imaging.letterbox(img)
            det_images.append(det[0]); det_boxes.append(_norm(box, size)[None]); det_val.append(False)
    finally:
        others.close()
    det_images[n_main:n_main] = list(more_images)
    det_boxes[n_main:n_main] = more_boxes
    det_val[n_main:n_main] = [False] * len(more_boxes)
    detector = DetectorData(np.stack(det_images), det_boxes, np.array(det_val))
    if not with_crops:
        return detector, None
    crop_data = CropData(np.concatenate(crops), np.array(crop_prod), np.array(crop_cat), np.array(crop_val))
    return detector, crop_data
