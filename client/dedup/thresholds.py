"""Calibrated thresholds: ``client/dedup/thresholds.json``, written by ``python -m bench.dedup_calibrate``.

The file records, with each method's threshold, the ``embedder_id`` of the embedder the cnn threshold
was calibrated on: the identity the server reports (``RetrievalClient.embedder_id()``), so the check
holds against any server, local or remote. A file without it (older ones record ``embedder_sha256``
of an ONNX file instead) is read with the id unknown, and then nothing is checked.
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
    embedder_id: str | None
    source: str
    extra: dict[str, dict] = field(default_factory=dict)  # per method: the EXTRA_SETTINGS it has

    def get(self, method: str) -> float:
        if method not in self.values:
            raise ValueError(f"no calibrated threshold for {method!r} in {self.source}; pass --threshold or run "
                             "`python -m bench.dedup_calibrate`")
        return self.values[method]

    def check_embedder(self, served: str | None) -> bool:
        """False (and a StaleCalibration warning) when the served embedder is not the calibrated one."""
        if served is None or self.embedder_id is None or served == self.embedder_id:
            return True
        warnings.warn(StaleCalibration(
            f"the cnn threshold in {self.source} was calibrated on another embedder ({self.embedder_id}; the server "
            f"runs {served}); re-run `python -m bench.dedup_calibrate` or pass --threshold"), stacklevel=2)
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
    return Thresholds(values, data.get("embedder_id"), str(path), extra)
