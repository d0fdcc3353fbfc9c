"""A model folder: ``model.safetensors`` + ``model.json``, loaded without pickle."""

from __future__ import annotations

from pathlib import Path

import torch

from .card import MODEL_FORMAT, read_model_card
from .unet import UNetConfig, build_unet

__all__ = ["load_model", "MODEL_FORMAT"]


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load ``model.safetensors`` + ``model.json`` from ``model_dir`` (no pickle involved).

    Returns the network in eval mode on ``device`` and the ``model.json`` dict.
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = read_model_card(model_dir).meta
    weights_path = model_dir / "model.safetensors"
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path}: missing; a model folder holds model.json, model.safetensors and review_context.safetensors")
    model = build_unet(UNetConfig.from_dict(meta["architecture"]))
    model.load_state_dict(load_file(str(weights_path)))
    model = model.to(device, memory_format=torch.channels_last).eval()  # see predict_slices
    return model, meta
