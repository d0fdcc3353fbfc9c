"""Predictor: models loaded once; cross-validation folds ensembled by averaging their softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_ct, save_nifti
from unet_pipeline.io.files import save_json
from unet_pipeline.model.unet import UNetConfig, build_unet
from unet_pipeline.infer.predictor import Predictor
from unet_pipeline.preprocess.transform import preprocess_image
from unet_pipeline.model.folder import MODEL_FORMAT

PLAN = {"target_spacing_mm": [1.0, 1.0], "num_classes": 3, "patch_size": [16, 16], "labels": {"1": "a", "2": "b"},
        "intensity": {"p00_5": -1000.0, "p99_5": 500.0, "mean": 0.0, "std": 200.0}}


def _model_folder(folder, seed, plan=PLAN):
    torch.manual_seed(seed)
    config = UNetConfig(num_classes=3, base_channels=4, depth=2)
    model = build_unet(config)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    save_json({"format": MODEL_FORMAT, "architecture": config.to_dict(), "labels": plan["labels"], "plan": plan},
              folder / "model.json")
    return folder


@pytest.fixture
def case(tmp_path):
    image, _, affine = make_ct(shape=(20, 18, 4), spacing=(1.0, 1.0, 3.0))
    preprocess_image(save_nifti(tmp_path / "img.nii.gz", image, affine), PLAN, tmp_path / "pre", case_id="c")
    return tmp_path / "pre"


def test_folds_are_ensembled_by_averaging_their_probabilities(tmp_path, case):
    folds = [_model_folder(tmp_path / f"fold_{i}", seed=i) for i in range(2)]
    singles = []
    for i, fold in enumerate(folds):
        Predictor([fold], "cpu").predict(case, tmp_path / f"p{i}.npy")
        singles.append(np.load(tmp_path / f"p{i}.npy").astype(np.float32))
    ensemble = Predictor(folds, "cpu")
    info = ensemble.predict(case, tmp_path / "ens.npy")
    both = np.load(tmp_path / "ens.npy").astype(np.float32)
    n_z, n_y, n_x = np.load(case / "image.npy").shape
    assert info["n_models"] == 2 and both.shape == singles[0].shape == (n_z, 3, n_y, n_x)
    assert not np.allclose(singles[0], singles[1], atol=1e-2)  # two different networks
    np.testing.assert_allclose(both, (singles[0] + singles[1]) / 2, atol=2e-3)  # float16 files
    np.testing.assert_allclose(both.sum(1), 1.0, atol=2e-3)


def test_folds_of_different_trainings_are_refused(tmp_path):
    other = {**PLAN, "target_spacing_mm": [2.0, 2.0]}
    folds = [_model_folder(tmp_path / "a", 0), _model_folder(tmp_path / "b", 1, plan=other)]
    with pytest.raises(ValueError, match="plan or labels differ"):
        Predictor(folds, "cpu")


def test_missing_preprocessed_files_name_the_file(tmp_path):
    predictor = Predictor([_model_folder(tmp_path / "m", 0)], "cpu")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*image\.npy"):
        predictor.predict(tmp_path / "nowhere", tmp_path / "out.npy")


def test_out_of_memory_halves_the_tile_batch_and_keeps_the_case_on_its_device(tmp_path, case, caplog):
    """A CUDA out-of-memory error (raised here by a wrapped network for batches of more than one
    tile) halves the tile batch; no CPU copy of the models is made, and the probabilities are
    those of the run without the error."""
    import logging

    class OutOfMemoryAbove(torch.nn.Module):
        def __init__(self, net, limit):
            super().__init__()
            self.net, self.limit = net, limit

        def forward(self, x):
            if x.shape[0] > self.limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
            return self.net(x)

    folder = _model_folder(tmp_path / "m", 0)
    Predictor([folder], "cpu").predict(case, tmp_path / "plain.npy", {"batch_size": 1})
    predictor = Predictor([folder], "cpu")
    predictor.models = [OutOfMemoryAbove(predictor.models[0], limit=1)]
    with caplog.at_level(logging.WARNING, logger="unet_pipeline.model.tiling"):
        info = predictor.predict(case, tmp_path / "oom.npy", {"batch_size": 4})
    assert info["device"] == "cpu" and not hasattr(predictor, "_cpu_models")
    np.testing.assert_array_equal(np.load(tmp_path / "oom.npy"), np.load(tmp_path / "plain.npy"))
    assert "4 tile(s) a pass: 2 from now on" in caplog.text and "2 tile(s) a pass: 1 from now on" in caplog.text
