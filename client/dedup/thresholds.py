"""Calibrated thresholds: ``client/dedup/thresholds.json``, written by ``python -m bench.dedup_calibrate``.

The file records, with each method's threshold, the ``embedder_id`` of the embedder the cnn threshold
was calibrated on: the identity the server reports (``RetrievalClient.embedder_id()``), so the check
holds against any server, local or remote. A build is bit-identical only on the same kind of CPU, so one
recipe gives other weights, and another id, on another machine; ``embedder_ids`` lists every embedder a
calibration run gave exactly the same thresholds on (bench.dedup_calibrate adds its embedder when they
agree, and starts the list again when they do not). A file without an id (older ones record
``embedder_sha256`` of an ONNX file instead) is read with the id unknown, and then nothing is checked.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.json")
EXTRA_SETTINGS = ("candidate", "min_inliers")  # more calibrated settings of a method (cnn's geometric check)


class StaleCalibration(UserWarning):
    """The served embedder is not the one the cnn threshold was calibrated on."""


@dataclass
class Thresholds:
    values: dict[str, float]
    embedder_id: str | None  # the first embedder calibrated on (None: unknown, nothing is checked)
    source: str
    extra: dict[str, dict] = field(default_factory=dict)  # per method: the EXTRA_SETTINGS it has
    also: tuple[str, ...] = ()  # other embedders that calibrated to exactly these thresholds (not embedder_id)

    @property
    def embedder_ids(self) -> tuple[str, ...]:
        return () if self.embedder_id is None else (self.embedder_id, *self.also)

    def get(self, method: str) -> float:
        if method not in self.values:
            raise ValueError(f"no calibrated threshold for {method!r} in {self.source}; pass --threshold or run "
                             "`python -m bench.dedup_calibrate`")
        return self.values[method]

    def check_embedder(self, served: str | None) -> bool:
        """False (and a StaleCalibration warning) when the served embedder is none of the calibrated ones."""
        if served is None or self.embedder_id is None or served in self.embedder_ids:
            return True
        warnings.warn(StaleCalibration(
            f"the cnn threshold in {self.source} was calibrated on other embedders ({', '.join(self.embedder_ids)}; the "
            f"server runs {served}); re-run `python -m bench.dedup_calibrate` or pass --threshold"), stacklevel=2)
        return False


def load_thresholds(path: Path = THRESHOLDS_FILE) -> Thresholds:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return Thresholds({}, None, str(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    methods = data.get("methods", {})
    values = {k: float(v["threshold"]) for k, v in methods.items()}
    extra = {k: {n: x for n, x in v.items() if n in EXTRA_SETTINGS} for k, v in methods.items()}
    ids = [str(i) for i in data.get("embedder_ids", [])]
    first = data.get("embedder_id") or (ids[0] if ids else None)
    return Thresholds(values, first, str(path), extra, tuple(i for i in ids if i != first))
