"""Logging for rule scripts and the CLI: one log file per job, readable errors.

Library modules only use ``logging.getLogger(__name__)``; the entry points (rule scripts, CLI)
attach handlers with :func:`rule_logging`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import CaseError, ConfigError

__all__ = ["rule_logging", "FORMAT"]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@contextlib.contextmanager
def rule_logging(log_path: str | Path | None, *, level: int = logging.INFO, console: bool = False) -> Iterator[logging.Logger]:
    """Send the package's log records (and Python warnings) to ``log_path`` for the block.

    A :class:`~unet_pipeline.errors.CaseError` or :class:`~unet_pipeline.errors.ConfigError`
    raised inside is logged as one readable ``ERROR`` line, printed to stderr, and turned into
    exit status 1, with no traceback from deep inside a library. Other exceptions are logged
    with their traceback and re-raised.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
    if console or not log_path:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    old_level = root.level
    root.setLevel(level)
    logging.captureWarnings(True)
    logger = logging.getLogger("unet_pipeline")
    try:
        yield logger
    except (CaseError, ConfigError) as exc:
        logger.error("%s", exc)
        if log_path:
            print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        logger.exception("failed")
        raise
    finally:
        logging.captureWarnings(False)
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)
