"""Errors raised for bad input, in the user's terms.

Every problem with a case is reported as a :class:`CaseError` that names the file and the
problem, so that a failing Snakemake job shows one readable line instead of a traceback from
inside numpy or nibabel.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CaseError", "ConfigError"]


class CaseError(ValueError):
    """A case (image and/or label file) cannot be processed.

    Parameters
    ----------
    path
        The offending file (or folder, for a DICOM series).
    problems
        One or more human-readable problems; each becomes one line of the message.
    """

    def __init__(self, path: str | Path, problems: str | list[str]) -> None:
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.path}:\n{lines}" if len(self.problems) > 1 else f"{self.path}: {self.problems[0]}")


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the key."""
