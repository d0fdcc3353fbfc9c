"""Device selection: a usable GPU, else the CPU with one warning."""

from __future__ import annotations

import pytest


def test_auto_device_falls_back_to_the_cpu_with_one_warning(monkeypatch, caplog):
    import logging

    import unet_pipeline.device as device

    monkeypatch.setattr(device, "_cuda_usable", lambda: False)
    monkeypatch.setattr(device, "_warned_no_gpu", False)
    with caplog.at_level(logging.WARNING, logger="unet_pipeline.device"):
        assert device.select_device("auto").type == "cpu"
        assert device.select_device("auto").type == "cpu"
    assert caplog.text.count("no usable GPU found: running on the CPU") == 1
    monkeypatch.setattr(device, "_cuda_usable", lambda: True)
    assert device.select_device("auto").type == "cuda"
    with pytest.warns(UserWarning, match="no usable GPU"):
        monkeypatch.setattr(device, "_cuda_usable", lambda: False)
        assert device.select_device("cuda").type == "cpu"
