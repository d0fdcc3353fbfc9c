"""Class names of the config's ``cohort.label_names`` and their matching to DICOM ROI names.

An RTSTRUCT names its structures (ROIs) and a DICOM-SEG its segments as each hospital and
planning system likes ("Liver", "LIVER", "Leber", "Lung_L", ...); ``label_names`` says which of
them make which class. It takes one of three forms (not mixed):

``{1: liver, 2: spleen}``
    label value -> class name; an ROI belongs to a class when its name equals the class name,
    letter case and surrounding blanks ignored.
``{liver: [Liver, LIVER, Leber], lung_left: "(?i)lung[ _-]?(l|left)"}``
    class name -> ROI names (a list: any of them, letter case ignored) or one regular expression
    (a string: it must match the whole ROI name, :func:`re.fullmatch`); the label values are
    1, 2, ... in the order given.
``{1: {name: liver, roi: [Liver, Leber]}, 5: {name: lung_left, roi: "(?i)lung[ _-]?l"}}``
    label value -> class name and ROI names or regex (``roi`` left out: the class name).

:func:`match_rois` assigns a case's ROIs to the classes and names what makes the case
unusable: no ROI matching any class, several ROIs matching one class, one ROI matching several
classes. ROIs matching no class (a body outline, a couch) are left out.

Standard library only: the Snakefile parses the config with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["RoiPattern", "RoiMatch", "parse_label_names", "label_names", "match_rois", "roi_matches"]

#: ROI names of a class (matched ignoring letter case) or one regex matched against the whole ROI name.
RoiPattern = list[str] | str

_KEY = "cohort.label_names"


def _is_value(key: object) -> bool:
    return isinstance(key, int) and not isinstance(key, bool) or isinstance(key, str) and key.strip().isdigit()


def _pattern(value: object, where: str) -> RoiPattern:
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{where}: {value!r} is not a valid regular expression ({exc})") from exc
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise ConfigError(f"{where}: expected a list of ROI names or a regular expression, got {value!r}")


def parse_label_names(raw: Mapping | None, *, key: str = _KEY) -> tuple[dict[int, str], dict[int, RoiPattern]]:
    """``(label value -> class name, label value -> ROI pattern)`` from any form of ``label_names``.

    Classes without a pattern (the ``{1: liver}`` form) match ROIs named like the class. Label
    value 0 (background) is dropped.

    Raises
    ------
    ConfigError
        Mixed forms, a value that is not a whole number >= 0, a class named twice, a bad regex;
        the message names ``key``.
    """
    if not raw:
        return {}, {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(raw).__name__}")
    by_value = [_is_value(k) for k in raw]
    if any(by_value) and not all(by_value):
        raise ConfigError(f"{key}: use one form, label value -> class name ({{1: liver}}) or class name -> ROI names "
                          f"({{liver: [Liver, LIVER]}}), not both (keys: {list(raw)})")
    names: dict[int, str] = {}
    patterns: dict[int, RoiPattern] = {}
    if all(by_value):
        for k, v in raw.items():
            value = int(k)
            if isinstance(v, Mapping):
                extra = set(v) - {"name", "roi"}
                if extra or not isinstance(v.get("name"), str) or not v["name"].strip():
                    raise ConfigError(f"{key}.{k}: expected {{name: <class name>, roi: <ROI names or regex>}}, "
                                      f"got {v!r}")
                names[value] = v["name"].strip()
                if v.get("roi") is not None:
                    patterns[value] = _pattern(v["roi"], f"{key}.{k}.roi")
            elif isinstance(v, str) and v.strip():
                names[value] = v.strip()
            else:
                raise ConfigError(f"{key}.{k}: expected a class name, got {v!r}")
    else:
        for value, (k, v) in enumerate(raw.items(), start=1):
            names[value] = str(k).strip()
            patterns[value] = _pattern(v, f"{key}.{k}")
    names.pop(0, None)
    patterns.pop(0, None)
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name.lower() in seen:
            raise ConfigError(f"{key}: class name {name!r} given to label values {seen[name.lower()]} and {value}")
        seen[name.lower()] = value
    return dict(sorted(names.items())), dict(sorted(patterns.items()))


def label_names(raw: Mapping | None, *, key: str = _KEY) -> dict[int, str]:
    """Label value -> class name of any form of ``label_names`` (see :func:`parse_label_names`)."""
    return parse_label_names(raw, key=key)[0]


def roi_matches(roi: str, name: str, pattern: RoiPattern | None) -> bool:
    """Whether ROI name ``roi`` belongs to the class ``name`` with ``pattern`` (None: the class name)."""
    roi = roi.strip()
    if pattern is None:
        return roi.lower() == name.strip().lower()
    if isinstance(pattern, str):
        return re.fullmatch(pattern, roi) is not None
    return roi.lower() in {p.lower() for p in pattern}


@dataclass
class RoiMatch:
    """How the ROIs of one RTSTRUCT (or segments of one DICOM-SEG) map to the classes.

    Attributes
    ----------
    rois
        The ROI names, in file order.
    classes
        Label value -> indices into ``rois`` of the ROIs matching that class (classes with none left out).
    unmatched
        Names of the ROIs matching no class (left out of the label).
    missing
        Label values of the classes no ROI matches (background in this case).
    problems
        What makes the label unusable, each naming the ROIs: no ROI matches any class, several
        ROIs match one class, an ROI matches several classes.
    """

    rois: list[str]
    classes: dict[int, list[int]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def assignment(self) -> dict[int, int]:
        """ROI index -> label value, for the ROIs that match exactly one class which no other ROI matches."""
        return {idx[0]: value for value, idx in self.classes.items() if len(idx) == 1
                and sum(idx[0] in other for other in self.classes.values()) == 1}


def match_rois(rois: Sequence[str], names: Mapping[int, str], patterns: Mapping[int, RoiPattern] | None = None,
               *, what: str = "ROI") -> RoiMatch:
    """Match ROI (or segment) names to the classes ``names`` with ``patterns`` (:func:`parse_label_names`).

    ``what`` names the objects in the problems (``"ROI"``, ``"segment"``).
    """
    patterns = patterns or {}
    result = RoiMatch(list(rois))
    for value, name in sorted(names.items()):
        hits = [i for i, roi in enumerate(rois) if roi_matches(roi, name, patterns.get(value))]
        if hits:
            result.classes[value] = hits
        else:
            result.missing.append(value)
    matched = {i for hits in result.classes.values() for i in hits}
    result.unmatched = [roi for i, roi in enumerate(rois) if i not in matched]
    found = ", ".join(repr(r) for r in rois) or "none"
    if not result.classes:
        wanted = ", ".join(names.values()) or "none declared"
        result.problems.append(f"no {what} matches a class (classes: {wanted}; {what}s: {found}); "
                               "map the names in cohort.label_names")
    for value, hits in result.classes.items():
        if len(hits) > 1:
            result.problems.append(f"class {names[value]!r} is matched by {len(hits)} {what}s "
                                   f"({', '.join(repr(rois[i]) for i in hits)}; {what}s: {found}); "
                                   "make its cohort.label_names entry match one")
    for i in sorted(matched):
        owners = [names[v] for v, hits in result.classes.items() if i in hits]
        if len(owners) > 1:
            result.problems.append(f"{what} {rois[i]!r} matches several classes ({', '.join(owners)})")
    return result
