"""Training on a CUDA GPU: mixed precision end to end, and a loss that never waits for the device.

Marked ``gpu`` and skipped without CUDA; ``pytest -m gpu`` runs every GPU test.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.train.test_training import _train_args, prepared  # noqa: F401 (fixture)
from unet_pipeline import stages
from unet_pipeline.train.losses import make_loss

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu marker); none here")]


def test_amp_training_on_the_gpu_gives_a_finite_model(prepared, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    args = _train_args(prepared, out, device="cuda", amp=True, deterministic=False)
    stages.train(**args)
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["device"].startswith("cuda") and meta["training"]["amp"] is True
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())


@pytest.mark.parametrize("name", ["dice_ce", "dice", "ce"])
def test_the_loss_does_not_synchronise_with_the_gpu(name):
    """``set_sync_debug_mode("error")`` raises on any device-to-host synchronisation."""
    logits = torch.randn(4, 3, 32, 32, device="cuda", requires_grad=True)
    target = torch.randint(0, 3, (4, 32, 32), device="cuda")
    loss_fn = make_loss(name)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = loss_fn(logits, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)
