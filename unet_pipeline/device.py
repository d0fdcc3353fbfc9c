"""The device a job computes on: a usable GPU, else the CPU (with one warning per process).

Training (:mod:`unet_pipeline.train`) and prediction (:mod:`unet_pipeline.infer.predictor`) both
pick their device here. A GPU counts as usable only when a tensor can be placed on it, so a job
given a fake or broken GPU (``CUDA_VISIBLE_DEVICES`` naming no real device, as under the test
cluster's fake GRES) runs on the CPU instead of failing.
"""

from __future__ import annotations

import logging
import warnings

import torch

__all__ = ["select_device"]

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """``"auto"``: CUDA when a usable GPU is present, else the CPU with a warning; or an explicit device.

    The warning for ``"auto"`` is logged once per process: a job on a node without a (usable)
    GPU says in its log that it ran on the CPU.
    """
    global _warned_no_gpu
    if preference != "auto":
        dev = torch.device(preference)
        if dev.type == "cuda" and not _cuda_usable():
            warnings.warn("device 'cuda' requested but no usable GPU found; falling back to CPU", stacklevel=2)
            return torch.device("cpu")
        return dev
    if _cuda_usable():
        return torch.device("cuda")
    if not _warned_no_gpu:
        _warned_no_gpu = True
        log.warning("no usable GPU found: running on the CPU (slower; set device: cpu to silence this)")
    return torch.device("cpu")


_warned_no_gpu = False


def _cuda_usable() -> bool:
    try:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return False
        torch.zeros(1, device="cuda")
        return True
    except Exception:  # a fake or broken GPU (CUDA_VISIBLE_DEVICES with no device): fall back to CPU
        return False
