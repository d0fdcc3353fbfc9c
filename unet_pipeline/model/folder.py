"""A model folder: ``model.safetensors`` + ``model.json``, loaded without pickle."""

from __future__ import annotations

from pathlib import Path

import torch

from .unet import UNetConfig, build_unet

__all__ = ["load_model"]


MODEL_FORMAT = "unet-pipeline-model/1"


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load ``model.safetensors`` + ``model.json`` from ``model_dir`` (no pickle involved).

    Returns the network in eval mode on ``device`` and the ``model.json`` dict.
    """
    from safetensors.torch import load_file

    from ..io.files import load_json

    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "model.json", model_dir / "model.safetensors"
    for p in (meta_path, weights_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; a model folder holds model.json and model.safetensors")
    meta = load_json(meta_path)
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path}: not a unet-pipeline model (format {meta.get('format')!r})")
    model = build_unet(UNetConfig.from_dict(meta["architecture"]))
    model.load_state_dict(load_file(str(weights_path)))
    model = model.to(device, memory_format=torch.channels_last).eval()  # see predict_slices
    return model, meta
