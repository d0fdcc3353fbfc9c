"""Errors raised for bad input, in the user's terms.

Every problem with a case is reported as a :class:`CaseError` that names the file and the
problem, so that a failing Snakemake job shows one readable line instead of a traceback from
inside numpy or nibabel.
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any

__all__ = ["CaseError", "ConfigError", "short_error", "check_nonneg_float"]


class CaseError(ValueError):
    """A case (image and/or label file) cannot be processed.

    Parameters
    ----------
    path
        The offending file (or folder, for a DICOM series).
    problems
        One or more human-readable problems; each becomes one line of the message. A problem that
        starts with ``path`` (as check results do) has it removed, so the message names it once;
        a single problem naming a file inside the folder ``path`` is the whole message.
    """

    def __init__(self, path: str | Path, problems: str | list[str]) -> None:
        self.path = str(path)
        problems = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [p.removeprefix(f"{self.path}: ") for p in problems]  # the path is named once
        lines = "\n".join(f"  - {p}" for p in self.problems)
        if len(self.problems) > 1:
            super().__init__(f"{self.path}:\n{lines}")
        elif self.problems[0].startswith((f"{self.path}/", f"{self.path}\\")) and ": " in self.problems[0]:
            super().__init__(self.problems[0])  # it names a file inside this folder already
        else:
            super().__init__(f"{self.path}: {self.problems[0]}")


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the key."""


def short_error(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (at most 200 characters of it) for a one-line report."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_nonneg_float(value: Any, name: str, *, positive: bool = False) -> float:
    """Return ``value`` as float; raise unless it is a finite number >= 0 (> 0 if ``positive``).

    ``TypeError`` for a non-number (``bool`` included), ``ValueError`` naming ``name`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return value
