"""The plan as a typed object: what every stage after the fingerprint reads of ``plan.json``.

``plan.json`` (written by :func:`unet_pipeline.plan.planner.plan_from_fingerprint`) and the
``plan`` of a trained model's ``model.json`` keep their JSON content; :meth:`Plan.from_dict` reads
either (plans of older versions too, and partial plans: ``target_spacing_mm`` and ``intensity``,
enough to preprocess, are the only required keys), and :meth:`Plan.to_dict` writes a full plan
back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..io.files import load_json
from ..io.geometry import check_slice_axis
from .fingerprint import label_values

__all__ = ["PLAN_FORMAT", "Plan", "IntensityNormalisation", "load_plan"]

#: The format tag of ``plan.json``.
PLAN_FORMAT = "unet-pipeline-plan/1"


@dataclass(frozen=True)
class IntensityNormalisation:
    """How CT intensities are normalised: clip to ``[p00_5, p99_5]`` HU, then ``(HU - mean) / std``.

    Attributes
    ----------
    p00_5, p99_5
        The clip range in HU (percentiles 0.5 and 99.5 of the scheme's voxels, or the fixed window).
    mean, std
        Mean and standard deviation (HU) of the clipped training foreground: the z-score.
    scheme
        ``"body"``, ``"foreground"`` or ``"window"`` (None in plans that predate the record).
    """

    p00_5: float
    p99_5: float
    mean: float
    std: float
    scheme: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntensityNormalisation:
        missing = [k for k in ("p00_5", "p99_5", "mean", "std") if k not in d]
        if missing:
            raise ValueError(f"plan intensity: missing {missing} (got keys {sorted(d)})")
        scheme = d.get("scheme")
        return cls(float(d["p00_5"]), float(d["p99_5"]), float(d["mean"]), float(d["std"]),
                   None if scheme is None else str(scheme))

    def to_dict(self) -> dict[str, Any]:
        """``{"p00_5", "p99_5", "mean", "std"[, "scheme"]}`` as in ``plan.json`` (HU)."""
        out: dict[str, Any] = {"p00_5": self.p00_5, "p99_5": self.p99_5, "mean": self.mean, "std": self.std}
        if self.scheme is not None:
            out["scheme"] = self.scheme
        return out


@dataclass(frozen=True)
class Plan:
    """The plan of a dataset: slicing plane, in-plane spacing, intensities, classes, patch size.

    Attributes
    ----------
    target_spacing_mm
        In-plane ``(y, x)`` spacing (mm) every slice is resampled to.
    intensity
        The CT normalisation (:class:`IntensityNormalisation`).
    labels
        Label value -> class name (background 0 excluded), in ascending value order; class index
        ``k`` (1..K) of the network stands for the ``k``-th value (:attr:`label_values`).
    num_classes
        Classes of the network, background included (``len(labels) + 1`` when labels are given).
    patch_size
        Training and inference tile ``(Y, X)`` in pixels (None in partial plans).
    slice_axis
        The dataset's slicing plane (``axial``, ``coronal``, ``sagittal``).
    median_slice_thickness_mm
        Median slice spacing (mm) of the training cases along the slicing axis.
    training_cases
        The case ids the fingerprint was taken of.
    cases
        Per training case: canonical ``shape`` ``(Z, Y, X)`` (voxels), ``spacing_mm`` ``(z, y, x)``
        and ``foreground_voxels``.
    """

    target_spacing_mm: tuple[float, float]
    intensity: IntensityNormalisation
    labels: dict[int, str] = field(default_factory=dict)
    num_classes: int | None = None
    patch_size: tuple[int, int] | None = None
    slice_axis: str = field(default_factory=lambda: check_slice_axis(None))
    median_slice_thickness_mm: float | None = None
    training_cases: tuple[str, ...] = ()
    cases: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    format: str = PLAN_FORMAT

    @property
    def label_values(self) -> list[int]:
        """Sorted label values (background excluded): class index ``k`` stands for the ``k``-th."""
        return sorted(self.labels)

    @property
    def label_names(self) -> list[str]:
        """Class names in class-index order (1..K)."""
        return [self.labels[v] for v in self.label_values]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """A plan from ``plan.json``'s content (or a model's ``plan``).

        Raises
        ------
        ValueError
            ``target_spacing_mm`` or ``intensity`` is missing or unusable, or the labels are not
            label values 1..65535 (at most 255 classes), or ``num_classes`` disagrees with them.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"a plan is a mapping (plan.json's content), got {type(d).__name__}")
        missing = [k for k in ("target_spacing_mm", "intensity") if k not in d]
        if missing:
            raise ValueError(f"plan: missing {missing} (got keys {sorted(d)})")
        labels = {int(v): str(d["labels"][v]) for v in sorted(d["labels"], key=int)} if d.get("labels") else {}
        if labels:
            label_values(labels)  # raises for background or too many classes
        num_classes = d.get("num_classes")
        num_classes = len(labels) + 1 if num_classes is None and labels else num_classes
        if labels and int(num_classes) != len(labels) + 1:
            raise ValueError(f"plan: num_classes {num_classes} for {len(labels)} label(s) (expected {len(labels) + 1})")
        return cls(
            target_spacing_mm=_pair(d["target_spacing_mm"], float, "target_spacing_mm"),
            intensity=IntensityNormalisation.from_dict(d["intensity"]),
            labels=labels,
            num_classes=None if num_classes is None else int(num_classes),
            patch_size=None if d.get("patch_size") is None else _pair(d["patch_size"], int, "patch_size"),
            slice_axis=check_slice_axis(d.get("slice_axis")),
            median_slice_thickness_mm=(None if d.get("median_slice_thickness_mm") is None
                                       else float(d["median_slice_thickness_mm"])),
            training_cases=tuple(str(c) for c in d.get("training_cases") or ()),
            cases={str(k): dict(v) for k, v in (d.get("cases") or {}).items()},
            format=str(d.get("format", PLAN_FORMAT)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``plan.json`` (keys of a partial plan's missing parts left out)."""
        out: dict[str, Any] = {"format": self.format, "slice_axis": self.slice_axis}
        if self.labels:
            out["labels"] = {str(v): name for v, name in self.labels.items()}
            out["label_values"] = self.label_values
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        out["target_spacing_mm"] = list(self.target_spacing_mm)
        if self.patch_size is not None:
            out["patch_size"] = list(self.patch_size)
        out["intensity"] = self.intensity.to_dict()
        if self.median_slice_thickness_mm is not None:
            out["median_slice_thickness_mm"] = self.median_slice_thickness_mm
        if self.training_cases:
            out["training_cases"] = list(self.training_cases)
        if self.cases:
            out["cases"] = {k: dict(v) for k, v in self.cases.items()}
        return out

    def with_patch_size(self, patch_size: Sequence[int]) -> Plan:
        """The same plan with another tile ``(Y, X)`` (px): the unpadded U-Net's output sizes."""
        return replace(self, patch_size=_pair(patch_size, int, "patch_size"))


def load_plan(path: str | Path) -> Plan:
    """The :class:`Plan` of a ``plan.json`` file."""
    return Plan.from_dict(load_json(path))


def _pair(values: Sequence, kind: type, key: str) -> tuple:
    """Two values of ``kind`` from a list, or ``ValueError`` naming ``key``."""
    try:
        a, b = values
        return kind(a), kind(b)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"plan: {key} must be two numbers (y, x), got {values!r}") from exc
