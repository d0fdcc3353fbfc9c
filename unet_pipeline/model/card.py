"""``model.json``, the model card: read and written here only.

A trained model folder holds ``model.safetensors`` (the weights), ``review_context.safetensors``
(the review list's context reference, :mod:`unet_pipeline.quality.context`) and ``model.json``: the format
tag, the architecture (:class:`unet_pipeline.model.unet.UNetConfig`), the plan it was trained
with (slicing plane, spacing, intensities, patch size), the label map, the training, loss and
augmentation settings, the training and validation cases, the postprocessing recorded for its
segmentations, the training distribution and calibration of the review list (``review``) and the
versions it was made with. Every other module reads it through
:func:`read_model_card`, and training writes it through :func:`write_model_card`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.files import load_json, save_json
from ..io.geometry import check_slice_axis
from ..plan.plan import Plan

__all__ = ["MODEL_FORMAT", "ModelCard", "read_model_card", "write_model_card", "model_card_path"]

#: The format tag of ``model.json``; a folder with another one is not this package's model.
MODEL_FORMAT = "unet-pipeline-model/1"


def model_card_path(model_dir: str | Path) -> Path:
    """``<model_dir>/model.json``."""
    return Path(model_dir) / "model.json"


@dataclass(frozen=True)
class ModelCard:
    """The content of one ``model.json`` with typed views of what the stages read.

    Attributes
    ----------
    path
        The ``model.json`` it was read from (or written to).
    meta
        The whole JSON object, as written by training.
    """

    path: Path
    meta: dict[str, Any] = field(repr=False)

    @property
    def labels(self) -> dict[int, str]:
        """Label value -> class name (background excluded), in ascending value order."""
        return {int(k): str(v) for k, v in sorted(self.meta["labels"].items(), key=lambda kv: int(kv[0]))}

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.meta["architecture"])

    @property
    def plan(self) -> Plan:
        """The plan the model was trained with (``plan.json`` of its run, patch size as used)."""
        return Plan.from_dict(self.meta["plan"])

    @property
    def in_channels(self) -> int:
        """Neighbouring slices the network takes as channels: the fewest slices a volume needs."""
        return int(self.meta["architecture"].get("in_channels", 1))

    @property
    def slice_axis(self) -> str:
        """The slicing plane the model was made for (axial for models that predate the record)."""
        return check_slice_axis((self.meta.get("plan") or {}).get("slice_axis"))

    @property
    def postprocess(self) -> dict[str, Any]:
        """The postprocessing recorded for the model's segmentations (none when unrecorded)."""
        return dict(self.meta.get("postprocess") or {})

    @property
    def review(self) -> dict[str, Any] | None:
        """What the review list needs (:mod:`unet_pipeline.quality`): ``reference`` (the training cases'
        per-class volume and HU, their scans' spacing and body HU), ``calibration`` (the fit of the
        signals to Dice: ``method``, ``features``, ``n_cases``, ``fitted_on``, ...; None when it could
        not be fitted) and ``feature_spearman``. None for models trained before it was recorded."""
        review = self.meta.get("review")
        return dict(review) if isinstance(review, dict) else None

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The review calibration (``review.calibration``), or None when the model has none."""
        calibration = (self.review or {}).get("calibration")
        return dict(calibration) if isinstance(calibration, dict) else None


def read_model_card(model_dir: str | Path) -> ModelCard:
    """The model card of a model folder.

    Raises
    ------
    FileNotFoundError
        No ``model.json`` in ``model_dir`` (the message names the path).
    ValueError
        Unreadable JSON, or not this package's format (the message names the path).
    """
    path = model_card_path(model_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a model folder holds model.json, model.safetensors and review_context.safetensors")
    try:
        meta = load_json(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the model card ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: not a unet-pipeline model (format {found!r}, expected {MODEL_FORMAT!r})")
    for key in ("architecture", "plan", "labels"):
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"{path}: not a trained model's model.json (no {key!r})")
    return ModelCard(path, meta)


def write_model_card(model_dir: str | Path, meta: Mapping[str, Any]) -> ModelCard:
    """Write ``model.json`` atomically (the format tag set); returns the card."""
    content = {**dict(meta), "format": MODEL_FORMAT}
    path = model_card_path(model_dir)
    save_json(content, path)
    return ModelCard(path, content)
