"""Trained models loaded once, predicting preprocessed cases one after another.

A :class:`Predictor` holds the network(s) of one trained model folder, or of several folders
whose softmax outputs are averaged (cross-validation folds). The ``infer`` stage, the
``unet-pipeline predict`` command and the model server (:mod:`unet_pipeline.infer.server`)
all predict through it, so the model is loaded once per process, not once per case.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..io.files import load_json
from ..preprocess.transform import air_value
from ..io.npy import NpyReader, NpyWriter
from ..plan.plan import Plan

__all__ = ["Predictor", "Ensemble", "load_models"]

log = logging.getLogger(__name__)


def load_models(model_dirs: Sequence[str | Path], device: torch.device) -> tuple[list[torch.nn.Module], dict]:
    """The networks of ``model_dirs`` on ``device`` and the ``model.json`` of the first one."""
    from ..model.folder import load_model

    models, metas = [], []
    for d in model_dirs:
        model, meta = load_model(d, device)
        models.append(model)
        metas.append(meta)
    if not metas:
        raise ValueError("no model folder given")
    for d, meta in zip(model_dirs[1:], metas[1:]):
        if meta["plan"] != metas[0]["plan"] or meta["labels"] != metas[0]["labels"]:
            raise ValueError(f"{d}: its plan or labels differ from {model_dirs[0]}; only folds of one training "
                             "run can be ensembled")
    return models, metas[0]


class Ensemble:
    """Average of the softmax outputs of several networks, returned as log-probabilities.

    Called on ``(N, C, H, W)`` float32 input, returns ``(N, K, H', W')`` logits (one network) or
    log-probabilities (several), which a softmax turns into the averaged probabilities.
    """

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        self.models = list(models)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.models) == 1:
            return self.models[0](x)
        probs = sum(torch.softmax(m(x).float(), 1) for m in self.models) / len(self.models)
        return torch.log(probs.clamp_min(1e-12))


class Predictor:
    """Models of ``model_dirs`` loaded once on ``device`` (``"auto"``: a usable GPU, else CPU).

    Thread-safe: :meth:`predict` may be called from several threads at once (the model server
    does). A CUDA out-of-memory error halves the tile batch and stitches on the host for the rest
    of the case (:class:`~unet_pipeline.model.tiling.TileBudget`); the case stays on the device.
    """

    def __init__(self, model_dirs: Sequence[str | Path], device: str | torch.device = "auto") -> None:
        from ..device import select_device

        self.model_dirs = [str(d) for d in model_dirs]
        self.device = select_device(str(device))
        t0 = time.perf_counter()
        self.models, self.meta = load_models(self.model_dirs, self.device)
        self.load_seconds = round(time.perf_counter() - t0, 3)
        self.cases_predicted = 0
        self._tta_logged = False  # the mirror_tta log line is written once per Predictor
        self._lock = threading.Lock()
        log.info("loaded %d model(s) from %s on %s in %.2f s", len(self.models), ", ".join(self.model_dirs),
                 self.device, self.load_seconds)

    @property
    def labels(self) -> dict[int, str]:
        """Label id -> name (background 0 not included)."""
        return {int(k): str(v) for k, v in self.meta["labels"].items()}

    def predict(self, preprocessed_dir: str | Path, out_probs: str | Path, inference: Mapping | None = None) -> dict:
        """Tiled inference of one preprocessed case into ``out_probs``.

        Parameters
        ----------
        preprocessed_dir
            Folder with ``image.npy`` (``(Z, Y', X')`` float32 z-scores) and ``meta.json``.
        out_probs
            Receives ``(Z, K, Y', X')`` float16 softmax probabilities as ``.npy`` (atomically).
        inference
            The ``inference`` config section (overlap, batch_size, whole_slices, mirror_tta, chunk_slices);
            a key left out takes the schema's default.

        Returns
        -------
        dict
            ``device``, ``seconds``, ``slices`` and ``n_models``.
        """
        inference = dict(inference or {})
        pre_dir = Path(preprocessed_dir)
        for name in ("image.npy", "meta.json"):
            if not (pre_dir / name).exists():
                raise FileNotFoundError(f"{pre_dir / name}: missing; run the preprocess stage first")
        net = self.network(bool(inference.get("mirror_tta", False)))
        margin = self.models[0].margin() if not self.meta["architecture"].get("padded", True) else 0
        with torch.inference_mode():
            info = _infer_volume(net, margin, self.meta, pre_dir, Path(out_probs), inference, self.device)
        with self._lock:
            self.cases_predicted += 1
        return {**info, "n_models": len(self.models)}

    def network(self, mirror_tta: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """The predictor that tiles go through: the network, or the :class:`Ensemble` of the folds,
        wrapped in :class:`~unet_pipeline.infer.tta.MirrorTTA` with the flips of training when
        ``mirror_tta`` asks for it (the first time a model trained without mirroring is asked, a
        WARNING says the flips are skipped; otherwise an INFO line names the flips)."""
        from .tta import MirrorTTA, trained_mirroring

        net = self.models[0] if len(self.models) == 1 else Ensemble(self.models)
        if not mirror_tta:
            return net
        axes, pairs = trained_mirroring(self.meta)
        with self._lock:
            first, self._tta_logged = not self._tta_logged, True
        if not axes:
            if first:
                log.warning("mirror_tta: %s was trained without mirroring (augment.mirror_p 0), so test-time "
                            "augmentation would show it images it never saw: predicting without flips",
                            ", ".join(self.model_dirs))
            return net
        if first:
            log.info("mirror_tta: flips along %s, those of training; left/right class pairs swapped back: %s",
                     "/".join(axes), [list(p) for p in pairs] or "none")
        return MirrorTTA(net, axes, pairs)


def _infer_volume(net: Callable[[torch.Tensor], torch.Tensor], margin: int, meta: Mapping, pre_dir: Path,
                  out_probs: Path, inference: Mapping, device: torch.device) -> dict:
    """Predict ``pre_dir/image.npy`` chunk by chunk with ``net`` (see :meth:`Predictor.network`) into a
    float16 ``.npy`` (never a float32 volume). ``margin``: px of context the network crops per side."""
    from ..model.tiling import iter_volume_probabilities

    arch = meta["architecture"]
    plan = Plan.from_dict(meta["plan"])
    volume = NpyReader(pre_dir / "image.npy")  # (Z, Y', X') float32, read chunk by chunk (no memory map)
    inten = load_json(pre_dir / "meta.json")["intensity"]
    pad = air_value(inten)
    k = plan.num_classes
    t0 = time.perf_counter()
    with NpyWriter(out_probs, (volume.shape[0], k, *volume.shape[1:]), np.float16) as writer:
        for _z0, probs in iter_volume_probabilities(
                net, volume, in_slices=int(arch.get("in_channels", 1)), num_classes=k,
                patch_size=plan.patch_size, overlap=float(inference.get("overlap", 0.5)),
                batch_size=inference.get("batch_size"), device=device, margin=margin, pad_value=pad,
                whole_slices=bool(inference.get("whole_slices", False)), precision=str(inference.get("precision", "auto")),
                chunk_slices=int(inference.get("chunk_slices", 16))):
            writer.write(probs.astype(np.float16))
    return {"seconds": round(time.perf_counter() - t0, 3), "slices": int(volume.shape[0]), "device": str(device)}
