"""The cases of one workflow run: discovered, screened, split into folds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..io.roi_names import RoiPattern, parse_label_names
from .discovery import CaseSpec, Cohort, cohort_source, discover_cohort
from .splits import fixed_splits, patient_of_cases
from .validation import rejection_lines, rejection_message, screen_cases

__all__ = ["WorkflowCases", "workflow_cases"]


@dataclass
class WorkflowCases:
    """Everything the Snakefile needs to know about the cases, worked out at parse time.

    Attributes
    ----------
    cases
        Case id -> spec (paths of the *source* files).
    labels
        Label value -> name.
    train, val, test
        Labelled case ids used for training, validation during training, and evaluation.
    unlabelled
        Case ids without labels: segmented, never evaluated.
    rejected
        Case id -> why the case was left out of the run (:func:`screen_cases`); the workflow
        processes every other case, then fails, naming these.
    folds
        Cross-validation: the case ids of each fold (empty without cross-validation). Fold ``f``
        validates on ``folds[f]`` and trains on the other folds; ``train`` then holds all of them
        and ``val`` is empty.
    patients
        Labelled case id -> patient, by which the splits were made (:mod:`unet_pipeline.cohort.splits`).
    roi_names
        Label value -> RTSTRUCT ROI (DICOM-SEG segment) names or regex (:attr:`Cohort.roi_names`).
    """

    cases: dict[str, CaseSpec]
    labels: dict[int, str]
    train: list[str]
    val: list[str]
    test: list[str]
    unlabelled: list[str]
    folds: list[list[str]] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    roi_names: dict[int, RoiPattern] = field(default_factory=dict)

    def fold_split(self, fold: int | None) -> tuple[list[str], list[str]]:
        """``(train ids, validation ids)`` of a cross-validation fold, or of the single model (None)."""
        if fold is None:
            return self.train, self.val
        if not 0 <= fold < len(self.folds):
            raise ValueError(f"fold {fold} does not exist ({len(self.folds)} folds)")
        return sorted(c for i, f in enumerate(self.folds) if i != fold for c in f), sorted(self.folds[fold])

    @property
    def labelled(self) -> list[str]:
        return sorted(self.train + self.val + self.test)

    @property
    def to_segment(self) -> list[str]:
        return sorted(self.test + self.unlabelled)


def workflow_cases(config: Mapping, results: str | Path | None) -> WorkflowCases:
    """Discover the cohort named by ``config`` and split it by patient.

    With ``predict.model`` set, every case is only segmented (no training, no split). Cases
    with unsafe, duplicate or case-clashing ids are left out (:func:`screen_cases`) and listed in
    :attr:`WorkflowCases.rejected`; the split is made from the other cases, once, and kept in
    ``<results>/splits.json`` for every later run (:func:`unet_pipeline.cohort.splits.fixed_splits`;
    ``results=None``: made afresh and not written).
    """
    from .naming import DEMO_LABELS, demo_case_ids

    cohort_cfg = config.get("cohort", {}) or {}
    demo = cohort_cfg.get("demo", {}) or {}
    if cohort_source(cohort_cfg) == "demo":
        root = Path(results) / "demo_cohort"
        cases = [CaseSpec(c, str(root / "images" / f"{c}.nii.gz"), str(root / "labels" / f"{c}.nii.gz"))
                 for c in demo_case_ids(int(demo.get("n_cases", 12)))]
        cohort = Cohort(cases, dict(DEMO_LABELS))
    else:
        cohort = discover_cohort(cohort_cfg)
    if cohort_cfg.get("label_names"):
        cohort.labels, cohort.roi_names = parse_label_names(cohort_cfg["label_names"])
    cohort.cases, rejected = screen_cases(cohort.cases, cohort.problems)
    if not cohort.cases:
        raise ConfigError("cohort: no cases found" if not rejected else "cohort: no usable cases: every case id "
                          "cannot be used (rename the files):\n" + "\n".join(rejection_lines(rejected)))
    if not cohort.labels and any(c.label for c in cohort.cases):
        raise ConfigError("cohort.label_names: the cohort has labels but no label names; set cohort.label_names")
    specs = cohort.by_id()
    labelled = [c.case_id for c in cohort.cases if c.label]
    unlabelled = sorted(c.case_id for c in cohort.cases if not c.label)
    predict_model = (config.get("predict", {}) or {}).get("model")
    if predict_model:
        return WorkflowCases(specs, cohort.labels, [], [], [], sorted(specs), rejected=rejected,
                             roi_names=cohort.roi_names)
    split = config.get("split", {}) or {}
    n_folds = int(split.get("folds", 1))
    patients = patient_of_cases([specs[c] for c in labelled], split.get("group_pattern"))
    splits_path = Path(results) / "splits.json" if results is not None else None
    splits = fixed_splits(labelled, patients, split, splits_path)
    if n_folds > 1:
        return WorkflowCases(specs, cohort.labels, splits.train, [], splits.test, unlabelled, splits.folds, rejected,
                             patients=splits.patients, roi_names=cohort.roi_names)
    if not splits.train:
        raise ConfigError("cohort: no labelled cases to train on (set predict.model to segment with a trained model)"
                          + (f"\n{rejection_message(rejected)}" if rejected else ""))
    return WorkflowCases(specs, cohort.labels, splits.train, splits.val, splits.test, unlabelled, rejected=rejected,
                         patients=splits.patients, roi_names=cohort.roi_names)
