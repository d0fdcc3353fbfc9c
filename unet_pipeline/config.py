"""The workflow config: one schema, its defaults, and what each stage takes from it.

:func:`load_config` validates a config against ``unet_pipeline/schemas/config.schema.yaml`` (the
schema the Snakefile validates with, too) and fills in the schema's defaults, so the
``unet-pipeline`` command and the workflow start from the same values. The ``*_options``
functions turn a validated config into the keyword arguments of one :mod:`unet_pipeline.stages`
function, as the workflow's rules pass them.

Postprocessing travels with the model: training records the config's ``postprocess`` section
in ``model.json``, and :func:`effective_postprocess` applies it unless the config overrides it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .schema import SCHEMA_PATH, check_config, result_keys, speed_only_keys

if TYPE_CHECKING:
    from .model.card import ModelCard

__all__ = [
    "CONFIG_SCHEMA",
    "load_config",
    "import_options",
    "fingerprint_options",
    "plan_options",
    "slice_options",
    "train_options",
    "inference_options",
    "speed_options",
    "config_sha256",
    "predict_model_dirs",
    "effective_postprocess",
    "model_label_names",
]

#: The one schema of the workflow config (shipped inside the package).
CONFIG_SCHEMA = SCHEMA_PATH


def load_config(source: str | Path | Mapping | None = None) -> dict:
    """A validated config with every default of the schema filled in.

    Parameters
    ----------
    source
        A YAML file, a mapping (copied, not changed) or None (the defaults alone, with no cohort).

    Raises
    ------
    ConfigError
        The file cannot be read, is not a mapping, or the config breaks the schema (the message
        names the file and the key: ``my.yaml: training.epocs: unknown key; did you mean epochs?``).
    """
    import yaml

    if source is None:
        config: Any = {}
    elif isinstance(source, Mapping):
        config = copy.deepcopy(dict(source))
    else:
        try:
            config = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{source}: cannot read the config ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: not a workflow config (a YAML mapping)")
    return dict(check_config(config, source if isinstance(source, (str, Path)) else None))


def import_options(config: Mapping, model_card: ModelCard | None = None) -> dict:
    """Keyword arguments of :func:`unet_pipeline.stages.import_case` (rule ``import_case``); ``roi_names``
    maps the ROIs of RTSTRUCT/DICOM-SEG labels to classes (:func:`unet_pipeline.io.roi_names.parse_label_names`).

    With ``model_card`` (a trained model's ``model.json``: predict-only runs, ``unet-pipeline
    predict``) the fewest slices and the slicing plane are the model's, not the config's.
    """
    from .io.roi_names import parse_label_names

    options = {"min_slices": int(config["model"]["in_channels"]),
               "geometry_tolerance_mm": float(config["cohort"]["geometry_tolerance_mm"]),
               "slice_axis": config["plan"]["slice_axis"],
               "roi_names": parse_label_names(config["cohort"].get("label_names"))[1]}
    if model_card is not None:
        options["min_slices"] = model_card.in_channels
        options["slice_axis"] = model_card.slice_axis
    return options


#: The keys of the ``plan`` section the fingerprint (the one planning step that reads images) takes.
FINGERPRINT_KEYS = ("slice_axis",)


def fingerprint_options(config: Mapping) -> dict:
    """Keyword arguments of :func:`unet_pipeline.stages.fingerprint` (rule ``fingerprint``):
    ``plan.slice_axis`` and ``split.seed`` (the foreground and body samples are drawn with it)."""
    return {**{k: config["plan"][k] for k in FINGERPRINT_KEYS}, "seed": int(config["split"]["seed"])}


def plan_options(config: Mapping) -> dict:
    """Keyword arguments of :func:`unet_pipeline.stages.plan` (rule ``plan``): every other key of the
    ``plan`` section (spacing, patch size, intensity scheme, HU window), decided without reading an image."""
    plan = {k: v for k, v in config["plan"].items() if k not in FINGERPRINT_KEYS}
    return {**plan, "max_patch": int(plan["max_patch"])}


def slice_options(config: Mapping) -> dict:
    """Keyword arguments of :func:`unet_pipeline.stages.slice_case` (rule ``slice_case``)."""
    loss = config["loss"]
    return {"weight_map": loss["name"] == "weighted_ce", "w0": float(loss["w0"]), "sigma_px": float(loss["sigma_px"])}


def train_options(config: Mapping, *, speed: bool = True) -> dict:
    """Keyword arguments of :func:`unet_pipeline.stages.train` (rule ``train``): the sections
    ``model``, ``training``, ``augment`` and ``loss``, and ``postprocess`` (recorded in ``model.json``).

    ``speed=False`` leaves out what cannot change the model: the speed-only training keys (device,
    threads, prefetch, checkpoints, progress, compile) and ``postprocess`` (a record, applied at
    segmentation). The rule's params are these, so editing them never retrains; its script adds
    them back from the config (:func:`speed_options`).
    """
    options = {"model": dict(config["model"]), "training": result_keys(config, "training"),
               "augment": dict(config["augment"]), "loss": dict(config["loss"])}
    if speed:
        options["training"].update(speed_options(config, "training"))
        options["postprocess"] = config.get("postprocess")
    return options


def inference_options(config: Mapping, *, speed: bool = True) -> dict:
    """The ``inference`` section as :func:`unet_pipeline.stages.infer` takes it; ``speed=False``
    leaves out the speed-only keys (device, batch size, model server, chunking), as rule
    ``infer``'s params do."""
    return dict(config["inference"]) if speed else result_keys(config, "inference")


def speed_options(config: Mapping, section: str) -> dict:
    """The speed-only keys of a section (``x-speed-only`` in the schema), with their values."""
    return {k: v for k, v in dict(config.get(section) or {}).items() if k in speed_only_keys(section)}


def predict_model_dirs(config: Mapping) -> list[str]:
    """``predict.model``: one trained model folder, or several (cross-validation folds) to ensemble."""
    given = config["predict"]["model"]
    return [given] if isinstance(given, str) else list(given)


def config_sha256(config: Mapping) -> str:
    """SHA-256 of a config (keys sorted): provenance written into every segmentation's sidecar."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode()).hexdigest()


def effective_postprocess(override: Mapping | None, model_meta: Mapping) -> dict:
    """The postprocessing applied to a model's segmentations.

    ``override`` (the config's ``postprocess`` section) when it is set, ``{}`` included (= none);
    when it is None (the schema's default), the ``postprocess`` record of the model's
    ``model.json``; none for a model trained before models recorded it.
    """
    if override is not None:
        return dict(override)
    return dict(model_meta.get("postprocess") or {})


def _names(labels: Mapping) -> dict[int, str]:
    return {int(k): str(v) for k, v in labels.items()}


def model_label_names(model_dir: str | Path | Sequence[str | Path], cohort_labels: Mapping | None = None, *,
                      source: str = "the cohort's label names (cohort.label_names or its dataset.json)"
                      ) -> dict[int, str]:
    """Label value -> class name of a trained model (of the first one, for an ensemble).

    Parameters
    ----------
    model_dir
        A model folder holding ``model.json``, or a list of them.
    cohort_labels
        The label map the cohort declares (``cohort.label_names`` or a dataset.json's
        ``labels``); empty or None: nothing to compare.
    source
        Where ``cohort_labels`` came from, for the message.

    Raises
    ------
    ConfigError
        ``model.json`` is missing or unreadable, or ``cohort_labels`` differs from the model's map
        (the message shows both maps).
    """
    from .model.card import model_card_path, read_model_card

    first = Path(model_dir if isinstance(model_dir, (str, Path)) else list(model_dir)[0])
    meta_path = model_card_path(first)
    try:
        labels = read_model_card(first).labels
    except FileNotFoundError as exc:
        raise ConfigError(f"predict.model: {meta_path} not found; name a trained model folder") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"predict.model: {exc}") from exc
    if cohort_labels and _names(cohort_labels) != labels:
        raise ConfigError(f"label names: {source} {_names(cohort_labels)} differ from the model's {labels} "
                          f"({meta_path}); a model segments the classes it was trained on: give the cohort the "
                          "model's label map, or none")
    return labels
