"""Case ids and image file names (standard library only, so the Snakefile can import it).

A case id is the image file name without its image extension (``liver_017.nii.gz`` ->
``liver_017``); nnU-Net's channel suffix ``_0000`` is dropped where the layout uses it.
A DICOM series gets the name of its folder (see :mod:`unet_pipeline.cohort.discovery` for the rule when
a folder holds several series: :func:`series_suffixes`, :func:`safe_name_part`). Case ids become
file and folder names, so only safe ids are accepted (:func:`case_id_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..io.formats import IMAGE_SUFFIXES

__all__ = ["CASE_ID_PATTERN", "case_id_from_path", "case_id_problems", "safe_name_part", "series_suffixes", "demo_case_ids", "DEMO_LABELS"]


#: A safe case id: letters, digits, ``.``, ``_`` and ``-``; starts with a letter or digit.
CASE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_CASE_ID_RE = re.compile(rf"^{CASE_ID_PATTERN}$")


def case_id_from_path(path: str | Path, *, channel_suffix: bool = False) -> str:
    """File name without its image extension; ``channel_suffix`` strips nnU-Net's ``_0000``."""
    name = Path(path).name
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if channel_suffix and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def case_id_problems(case_ids: Sequence[str]) -> dict[str, list[str]]:
    """Problems with case ids themselves: unsafe characters, duplicates, case-insensitive clashes.

    Returns a mapping case id -> problems (only ids with problems appear).
    """
    problems: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for cid in case_ids:
        if not _CASE_ID_RE.match(cid) or cid in {".", ".."}:
            problems.setdefault(cid, []).append(
                f"case id {cid!r} is not safe as a file name (allowed: letters, digits, '.', '_', '-'; "
                "must start with a letter or digit; at most 128 characters)"
            )
        key = cid.lower()
        if key in seen:
            other = seen[key]
            what = "duplicate case id" if other == cid else f"case id clashes with {other!r} on case-insensitive file systems"
            problems.setdefault(cid, []).append(what)
        else:
            seen[key] = cid
    return problems


def safe_name_part(text: str) -> str:
    """``text`` as a piece of a case id: each run of characters other than letters, digits, ``.``,
    ``_`` and ``-`` becomes ``_`` (``CT Abdomen 5mm`` -> ``CT_Abdomen_5mm``); ``x`` if nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "x"


def series_suffixes(numbers: Sequence[str | None]) -> list[str]:
    """Suffixes that tell apart the DICOM series found in one folder (``<folder>_<suffix>``).

    Each series' SeriesNumber (``"3"``, ``"003"`` -> ``3``) when every series has one and no two
    are equal; otherwise ``1``, ``2``, ... in the order given (by SeriesNumber, then UID).
    """
    as_int = []
    for n in numbers:
        try:
            value = int(str(n).strip())
        except ValueError:
            break
        if value < 0:
            break
        as_int.append(value)
    if len(as_int) == len(numbers) and len(set(as_int)) == len(as_int):
        return [str(n) for n in as_int]
    return [str(i) for i in range(1, len(numbers) + 1)]


def demo_case_ids(n_cases: int) -> list[str]:
    """Case ids of the built-in demo cohort: ``demo_000``, ``demo_001``, ..."""
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    return [f"demo_{i:03d}" for i in range(n_cases)]


#: Label value -> organ name of the built-in synthetic demo cohort.
DEMO_LABELS: dict[int, str] = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}
