"""Train/validation/test splits and cross-validation folds: by patient, fixed once, then kept.

Splits are made over *patients*, never over scans: every case of a patient lands on the same
side of every split and in the same fold, so no patient's anatomy is seen in training and again
in validation or test. A case's patient (:func:`patient_of_cases`) is, in this order:

1. the ``patient_id`` column of a CSV manifest (:attr:`CaseSpec.patient_id`, when given there);
2. the first group (or the whole match) of ``split.group_pattern``, a regex searched in the
   case id (``^(P\\d+)_`` makes ``P07_arterial`` and ``P07_venous`` one patient);
3. the PatientID (0010,0020) of a DICOM case's headers;
4. the case id itself (each case its own patient).

The assignment is written once to ``<results>/splits.json`` (:func:`fixed_splits`) and read by
every later run, so neither a changed seed nor a grown cohort moves a case between sides.
New labelled cases go to training (the side or fold of their patient, when the patient is
already known, so a new scan of a test patient is a test case); cases that left the cohort are
dropped. A file none of whose cases is still in the cohort (or a run without labelled cases,
which writes none) does not bind: the cohort is split afresh. Delete the file to split afresh.

With each case its own patient the assignment equals a seeded shuffle of the sorted case ids
(the first ``round(test_fraction * n)`` to test; folds round-robin).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

__all__ = ["split_cases", "assign_folds", "patient_of_cases", "Splits", "fixed_splits", "SPLITS_FORMAT"]

log = logging.getLogger(__name__)

SPLITS_FORMAT = "unet-pipeline-splits/1"


def _groups(case_ids: Sequence[str], groups: Mapping[str, str] | None) -> dict[str, list[str]]:
    """Patient -> its sorted case ids, for the given cases (a case without a patient: itself)."""
    out: dict[str, list[str]] = {}
    for cid in sorted(case_ids):
        out.setdefault(str((groups or {}).get(cid, cid)), []).append(cid)
    return out


def _shuffled_patients(by_patient: Mapping[str, list[str]], seed: int) -> list[str]:
    """Patients in a seeded random order (the shuffle of the sorted patient keys)."""
    # Order patients by their first case id, so singleton patients shuffle exactly as case ids do.
    patients = sorted(by_patient, key=lambda p: by_patient[p][0])
    order = list(range(len(patients)))
    random.Random(seed).shuffle(order)
    return [patients[i] for i in order]


def split_cases(case_ids: Sequence[str], test_fraction: float, seed: int,
                groups: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Seeded split of labelled case ids by patient: ``(train, test)``, each sorted.

    ``groups`` maps case id -> patient (absent: the case is its own patient). Whole patients
    go to test, in a seeded order, until it holds ``round(test_fraction * n)`` cases; at least
    one patient stays on each side when there are two or more patients and the fraction is > 0.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    by_patient = _groups(case_ids, groups)
    order = _shuffled_patients(by_patient, seed)
    n = sum(len(v) for v in by_patient.values())
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and len(order) >= 2:
        n_test = max(n_test, 1)
    test: list[str] = []
    for patient in order:
        if len(test) >= n_test:
            break
        test += by_patient[patient]
    if len(order) >= 2 and len(test) == n:  # keep at least one patient for training
        test = test[:-len(by_patient[patient])]
    held = set(test)
    return sorted(c for c in case_ids if c not in held), sorted(test)


def assign_folds(case_ids: Sequence[str], n_folds: int, seed: int,
                 groups: Mapping[str, str] | None = None) -> list[list[str]]:
    """Seeded assignment of whole patients (never slices, never single scans of a patient) to
    ``n_folds`` folds: each patient, in a seeded order, joins the fold with the fewest cases."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    by_patient = _groups(case_ids, groups)
    if len(by_patient) < n_folds:
        raise ConfigError(f"split.folds: {n_folds} folds need at least {n_folds} patients, found {len(by_patient)}")
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for patient in _shuffled_patients(by_patient, seed):
        smallest = min(range(n_folds), key=lambda f: (len(folds[f]), f))
        folds[smallest] += by_patient[patient]
    return [sorted(f) for f in folds]


def patient_of_cases(cases: Sequence, group_pattern: str | None = None) -> dict[str, str]:
    """Case id -> patient of each case (rules in the module docstring).

    ``cases`` are :class:`unet_pipeline.cohort.discovery.CaseSpec` (``case_id``, ``patient_id``,
    ``dicom_patient_id``). A ``group_pattern`` that does not match a case id leaves that case
    its own patient (logged once, with the count).
    """
    regex = None
    if group_pattern:
        try:
            regex = re.compile(group_pattern)
        except re.error as exc:
            raise ConfigError(f"split.group_pattern: {group_pattern!r} is not a valid regex ({exc})") from exc
    patients, unmatched = {}, []
    for spec in cases:
        patient = getattr(spec, "patient_id", None)
        if not patient and regex is not None:
            m = regex.search(spec.case_id)
            if m:
                patient = m.group(1) if regex.groups else m.group(0)
            else:
                unmatched.append(spec.case_id)
        patient = patient or getattr(spec, "dicom_patient_id", None) or spec.case_id
        patients[spec.case_id] = str(patient)
    if unmatched:
        log.warning("split.group_pattern %r matches no patient in %d case id(s) (%s%s): each is its own patient",
                    group_pattern, len(unmatched), ", ".join(unmatched[:5]), ", ..." if len(unmatched) > 5 else "")
    return patients


@dataclass
class Splits:
    """The fixed assignment of labelled cases. ``folds`` is empty without cross-validation;
    with it, ``train`` holds every fold's cases and ``val`` is empty."""

    train: list[str]
    val: list[str]
    test: list[str]
    folds: list[list[str]] = field(default_factory=list)
    patients: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": SPLITS_FORMAT, "settings": self.settings, "train": self.train, "val": self.val,
                "test": self.test, "folds": self.folds, "patients": self.patients}

    @classmethod
    def from_dict(cls, d: Mapping, path: Path) -> Splits:
        if d.get("format") != SPLITS_FORMAT:
            raise ConfigError(f"{path}: not a splits file of this pipeline (format {d.get('format')!r}); "
                              "delete it to split the cohort afresh")
        try:
            return cls([str(c) for c in d["train"]], [str(c) for c in d["val"]], [str(c) for c in d["test"]],
                       [[str(c) for c in f] for f in d.get("folds", [])],
                       {str(k): str(v) for k, v in d.get("patients", {}).items()}, dict(d.get("settings", {})))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: malformed splits file ({exc}); delete it to split the cohort afresh") from exc


def _fresh_splits(labelled: Sequence[str], patients: Mapping[str, str], settings: Mapping) -> Splits:
    seed = int(settings["seed"])
    train_val, test = split_cases(labelled, float(settings["test_fraction"]), seed, patients)
    if int(settings["folds"]) > 1:
        folds = assign_folds(train_val, int(settings["folds"]), seed + 2, patients)
        return Splits(sorted(train_val), [], test, folds)
    train, val = split_cases(train_val, float(settings["val_fraction"]), seed + 1, patients)
    return Splits(train, val, test)


def _side_of(splits: Splits) -> dict[str, str]:
    """Case id -> ``train``/``val``/``test``/``fold_<i>`` in a splits record."""
    side = {c: "test" for c in splits.test}
    side.update({c: "val" for c in splits.val})
    if splits.folds:
        side.update({c: f"fold_{i}" for i, f in enumerate(splits.folds) for c in f})
    else:
        side.update({c: "train" for c in splits.train})
    return side


def _update(old: Splits, labelled: Sequence[str], patients: Mapping[str, str], path: Path) -> Splits:
    """The kept splits with cases that left dropped and new cases placed (module docstring)."""
    now = set(labelled)
    side = {c: s for c, s in _side_of(old).items() if c in now}
    gone = sorted(set(_side_of(old)) - now)
    if gone:
        log.warning("%s: %d case(s) no longer in the cohort (or no longer labelled) left out: %s", path, len(gone),
                    ", ".join(gone[:10]) + (", ..." if len(gone) > 10 else ""))
    side_of_patient = {patients.get(c, c): s for c, s in sorted(side.items())}
    new = sorted(now - set(side))
    n_folds = len(old.folds)
    for cid in new:
        known = side_of_patient.get(patients.get(cid, cid))
        if known is None and n_folds:
            sizes = {f"fold_{i}": sum(1 for s in side.values() if s == f"fold_{i}") for i in range(n_folds)}
            known = min(sizes, key=lambda f: (sizes[f], int(f[5:])))
        side[cid] = known or "train"
        side_of_patient.setdefault(patients.get(cid, cid), side[cid])
    if new:
        log.info("%s: %d new labelled case(s) placed (training, or their patient's side): %s", path, len(new),
                 ", ".join(f"{c}->{side[c]}" for c in new[:10]) + (", ..." if len(new) > 10 else ""))
    pick = lambda name: sorted(c for c, s in side.items() if s == name)  # noqa: E731
    folds = [pick(f"fold_{i}") for i in range(n_folds)]
    train = sorted(c for f in folds for c in f) if n_folds else pick("train")
    return Splits(train, pick("val"), pick("test"), folds, settings=old.settings)


def _check_no_leak(splits: Splits, patients: Mapping[str, str], path: Path) -> None:
    """Refuse a splits record that puts one patient on two sides (e.g. after a change of grouping)."""
    seen: dict[str, str] = {}
    for cid, side in sorted(_side_of(splits).items()):
        side = "train" if side.startswith("fold_") and not splits.folds else side
        patient = patients.get(cid, cid)
        if seen.setdefault(patient, side) != side:
            raise ConfigError(f"{path}: patient {patient!r} has cases on two sides ({seen[patient]} and {side}, "
                              f"e.g. {cid}) under the current patient grouping; delete {path} to split afresh")


def fixed_splits(labelled: Sequence[str], patients: Mapping[str, str], split_cfg: Mapping,
                 path: str | Path | None) -> Splits:
    """The splits of the labelled cases: read from ``path`` (``splits.json``) when it exists,
    else made from ``split_cfg`` (``seed``, ``test_fraction``, ``val_fraction``, ``folds``) and
    written there; rules for cases added or removed since in the module docstring.

    Raises
    ------
    ConfigError
        The file is unreadable, has another number of folds than ``split.folds``, or puts one
        patient on two sides under the current grouping; the message says to delete it.
    """
    settings = {"seed": int(split_cfg.get("seed", 0)), "test_fraction": float(split_cfg.get("test_fraction", 0.25)),
                "val_fraction": float(split_cfg.get("val_fraction", 0.2)), "folds": int(split_cfg.get("folds", 1))}
    path = Path(path) if path is not None else None
    old = None
    if path is not None and path.exists():
        try:
            old = Splits.from_dict(json.loads(path.read_text(encoding="utf-8")), path)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the fixed splits ({exc}); delete it to split afresh") from exc
        if not set(_side_of(old)) & set(labelled):  # none of its cases is here: a new cohort, split afresh
            if _side_of(old):
                log.warning("%s: none of its cases is in the cohort any more; the cohort is split afresh", path)
            old = None
    if old is None:
        splits = _fresh_splits(labelled, patients, settings)
        splits.settings = settings
    else:
        n_old = len(old.folds) if old.folds else 1
        if n_old != settings["folds"]:
            raise ConfigError(f"split.folds is {settings['folds']} but {path} holds {n_old} fold(s); "
                              f"delete {path} to split the cohort afresh")
        if {k: old.settings.get(k) for k in settings} != settings:
            log.warning("%s: split settings in the config (%s) differ from those the splits were made with (%s); "
                        "the file is kept (delete it to split afresh)", path, settings, old.settings)
        splits = _update(old, labelled, patients, path)
    splits.patients = {c: patients.get(c, c) for c in sorted(labelled)}
    _check_no_leak(splits, splits.patients, path or Path("splits"))
    if path is not None and labelled:  # nothing to fix without labelled cases
        _write_if_changed(splits, path)
    return splits


def _write_if_changed(splits: Splits, path: Path) -> None:
    """Write atomically, and only when the content changes (every cluster job reads it too)."""
    from ..io.files import save_json

    if path.exists():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == splits.to_dict():
                return
        except (OSError, json.JSONDecodeError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(splits.to_dict(), path)
