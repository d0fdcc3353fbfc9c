"""``unet-pipeline``: run the workflow's stages without Snakemake.

Subcommands: ``demo-cohort``, ``check-cohort``, ``train``, ``predict``, ``evaluate``. Each calls
the same :mod:`unet_pipeline.stages` functions as the Snakemake rules, with the same arguments:
a config given with ``-c`` is validated against the workflow's schema and its defaults are filled
in (:func:`unet_pipeline.config.load_config`), so an option left out means the workflow's default.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from . import __version__
from .errors import CaseError, ConfigError

__all__ = ["main", "build_parser"]

log = logging.getLogger("unet_pipeline.cli")


def _cmd_demo_cohort(args: argparse.Namespace) -> int:
    from .stages import demo_cohort

    ids = demo_cohort(args.out_dir, n_cases=args.n_cases, seed=args.seed)
    print(f"wrote {len(ids)} demo cases to {args.out_dir}/images and {args.out_dir}/labels")
    return 0


def _cohort_from_args(args: argparse.Namespace, *, warn: bool = True):
    from .cohort.discovery import cohort_from_dataset_json, cohort_from_folders, cohort_from_manifest

    if args.dataset_json:
        return cohort_from_dataset_json(args.dataset_json)
    if args.manifest:
        return cohort_from_manifest(args.manifest)
    if args.images:
        return cohort_from_folders(args.images, args.labels, warn=warn)
    raise ConfigError("give -i IMAGES_DIR [-l LABELS_DIR], --dataset-json or --manifest")


def _has_cohort_args(args: argparse.Namespace) -> bool:
    return bool(args.images or args.dataset_json or args.manifest)


def _config(args: argparse.Namespace) -> dict:
    """The config of ``-c`` (or none), validated, with the schema's defaults; the cohort options
    of check-cohort and train (-i/-l/--dataset-json/--manifest) replace its cohort, and
    --label-names its ``cohort.label_names``."""
    from .cohort.discovery import read_label_names
    from .config import load_config

    config = load_config(getattr(args, "config", None))
    if hasattr(args, "images") and args.labels and not args.images:
        raise ConfigError("-l/--labels needs -i/--images")
    if hasattr(args, "images") and _has_cohort_args(args):
        config["cohort"].update(demo={**config["cohort"]["demo"], "enabled": False}, images=args.images,
                                labels=args.labels, dataset_json=args.dataset_json, manifest=args.manifest)
    if getattr(args, "label_names", None):
        config["cohort"]["label_names"] = read_label_names(args.label_names)
    return config


@contextlib.contextmanager
def _work_dir(path: str | None, prefix: str) -> Iterator[Path]:
    """``path`` (kept), or a temporary folder removed at the end."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


def _check_settings(args: argparse.Namespace):
    """``(cohort, label names, options of check_case)`` for check-cohort: the options, else the
    workflow config given with ``-c`` (its cohort, ``cohort.label_names``, ``model.in_channels``,
    ``cohort.geometry_tolerance_mm``, ``plan.slice_axis``), else the workflow's defaults."""
    from .cohort.discovery import cohort_source, discover_cohort
    from .config import import_options
    from .io.roi_names import label_names

    config = _config(args)
    if _has_cohort_args(args):
        cohort = _cohort_from_args(args, warn=False)
    elif args.config:
        if cohort_source(config["cohort"]) == "demo":
            raise ConfigError(f"{args.config}: cohort.demo.enabled is set: the built-in demo cohort is written by the "
                              "workflow; check it after a run, or name your cohort")
        cohort = discover_cohort(config["cohort"], warn=False)
    else:
        raise ConfigError("give -c CONFIG, -i IMAGES_DIR [-l LABELS_DIR], --dataset-json or --manifest")
    names = config["cohort"]["label_names"]
    labels = label_names(names) if names else cohort.labels
    options = import_options(config)
    if args.min_slices is not None:
        options["min_slices"] = args.min_slices
    if args.geometry_tolerance_mm is not None:
        options["geometry_tolerance_mm"] = args.geometry_tolerance_mm
    return cohort, labels, options


def _cmd_check_cohort(args: argparse.Namespace) -> int:
    from collections import Counter

    from .cohort.validation import CaseCheck, check_case, screen_cases

    cohort, labels, options = _check_settings(args)
    _, rejected = screen_cases(cohort.cases, cohort.problems)
    print(f"checking {len(cohort.cases)} case(s): label names {labels or '(none)'}, at least "
          f"{options['min_slices']} slice(s), geometry tolerance {options['geometry_tolerance_mm']:g} mm")
    for note in cohort.notes:
        print(f"note: {note}")
    folders = Counter(c.image for c in cohort.cases)
    rows, n_bad, n_warn = [], 0, 0
    for spec in cohort.cases:
        try:
            check = check_case(spec, labels, **options)
        except Exception as exc:  # noqa: BLE001 - one case must not end the pass
            check = CaseCheck(spec.case_id, errors=[f"{spec.image}: unexpected error while checking it "
                                                    f"({type(exc).__name__}: {exc})"])
        errors = [f"case id: {p}" for p in rejected.get(spec.case_id, [])] + check.errors
        n_bad += bool(errors)
        n_warn += bool(check.warnings)
        status = "ERROR" if errors else ("warning" if check.warnings else "ok")
        info = check.info
        geometry = f"{info.get('shape', '?')} @ {info.get('spacing_mm', '?')} mm {info.get('orientation', '')}"
        if spec.series_uid and folders[spec.image] > 1:  # several series of one folder: say which
            geometry += f"  series {spec.series_uid}"
        rows.append((spec.case_id, status, geometry, errors, check.warnings))
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'case'.ljust(width)}  status   geometry")
    for cid, status, geometry, errors, warnings in rows:
        print(f"{cid.ljust(width)}  {status.ljust(7)}  {geometry}")
        for e in errors:
            print(f"{''.ljust(width)}    error: {e}")
        for w in warnings:
            print(f"{''.ljust(width)}    warning: {w}")
    print(f"\n{len(rows)} case(s): {len(rows) - n_bad} usable, {n_bad} unusable, {n_warn} with warnings"
          + (f"; {len(cohort.notes)} file(s)/folder(s) passed over (notes above)" if cohort.notes else ""))
    return 1 if n_bad or not rows else 0


def _cmd_train(args: argparse.Namespace) -> int:
    """The workflow's chain up to the model (:func:`unet_pipeline.chain.train_cohort`): the same
    cases, splits, stages, arguments and defaults as the workflow."""
    from .chain import train_cohort
    from .cohort.validation import rejection_message

    config = _config(args)
    if config["predict"]["model"]:
        raise ConfigError(f"{args.config}: predict.model is set: the workflow would segment with that model, not "
                          "train; use `unet-pipeline predict`, or remove predict.model to train")
    if args.epochs:
        config["training"]["epochs"] = args.epochs
    if args.max_minutes is not None:
        config["training"]["max_minutes"] = args.max_minutes
    with _work_dir(args.work_dir, "unet-pipeline-") as work:
        cases, model_dirs = train_cohort(config, args.output, work)
    where = ", ".join(str(d) for d in model_dirs)
    print(f"model written to {where}: trained on {len(cases.train)} case(s), validated on "
          f"{len(cases.val) if not cases.folds else 'each fold'}")
    if cases.test:
        print(f"held out for testing, not trained on ({len(cases.test)}): {', '.join(cases.test)}")
    if cases.unlabelled:
        print(f"unlabelled, not trained on ({len(cases.unlabelled)}): {', '.join(cases.unlabelled)}")
    if cases.rejected:
        print(rejection_message(cases.rejected), file=sys.stderr)
        return 1
    return 0


def _predict_inputs(args: argparse.Namespace, config: Mapping):
    """``(case specs, the cohort's label map, where the map came from, rejected ids)`` of predict's ``-i``."""
    from .cohort.discovery import CaseSpec, cohort_from_dataset_json, cohort_from_folders
    from .cohort.naming import case_id_from_path
    from .cohort.validation import screen_cases
    from .io.dicom import find_series
    from .io.formats import is_image_file
    from .io.roi_names import label_names

    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"{src}: input not found")
    labels, source, problems = {}, "", {}
    if src.is_file() and src.name.lower().endswith(".json"):
        cohort = cohort_from_dataset_json(src)
        specs, labels, problems, source = cohort.cases, cohort.labels, cohort.problems, f"the labels of {src}"
    elif src.is_file() or (src.is_dir() and not any(is_image_file(p) or p.is_dir() for p in src.iterdir())):
        series = find_series(src)[0] if src.is_dir() else []  # its one image series, beside an RTSTRUCT/SEG say
        specs = [CaseSpec(case_id_from_path(src), str(src), series_uid=series[0].uid if len(series) == 1 else None)]
    else:
        cohort = cohort_from_folders(src)
        specs, problems = cohort.cases, cohort.problems
    if config["cohort"]["label_names"]:
        labels = label_names(config["cohort"]["label_names"])
        source = f"--label-names {args.label_names}" if args.label_names else f"cohort.label_names of {args.config}"
    specs, rejected = screen_cases(specs, problems)
    return specs, labels, source, rejected


def _cmd_predict(args: argparse.Namespace) -> int:
    from .chain import predict_cohort
    from .cohort.validation import rejection_message
    from .config import config_sha256, model_label_names

    config = _config(args)
    inference = dict(config["inference"])
    for key, value in (("device", args.device), ("overlap", args.overlap), ("batch_size", args.batch_size),
                       ("mirror_tta", args.tta)):
        if value is not None:
            inference[key] = value
    specs, cohort_labels, source, rejected = _predict_inputs(args, config)
    model_label_names(args.model, cohort_labels, source=source)  # refuses a cohort naming other classes
    dicom = {key: getattr(args, key) if getattr(args, key) is not None else bool(config["output"][key])
             for key in ("dicom_seg", "rtstruct")}
    with tempfile.TemporaryDirectory(prefix="unet-predict-") as work:
        status = predict_cohort(args.model, [(s.case_id, s.image, s.series_uid) for s in specs], args.output,
                                work_dir=work, inference=inference, postprocess=config["postprocess"],
                                overwrite=args.overwrite, provenance={"config_sha256": config_sha256(config)},
                                **dicom)
    failed = {k: v for k, v in status.items() if v not in ("ok", "skipped")}
    skipped = [k for k, v in status.items() if v == "skipped"]
    print(f"{len(status) - len(failed) - len(skipped)} of {len(status)} case(s) segmented into {args.output} "
          f"(volumes and QC flags: {Path(args.output) / 'volumes.csv'}; "
          f"which to review first: {Path(args.output) / 'review.csv'})")
    if skipped:
        print(f"{len(skipped)} case(s) skipped, their output was complete (--overwrite redoes them): "
              f"{', '.join(skipped)}")
    for cid, err in failed.items():
        print(f"  FAILED {cid}: {err}", file=sys.stderr)
    if rejected:
        print(rejection_message(rejected), file=sys.stderr)
    if failed or rejected:
        print(f"error: {len(failed) + len(rejected)} case(s) not segmented: {', '.join([*failed, *sorted(rejected)])}",
              file=sys.stderr)
        return 1
    return 0


def _label_values(paths: Sequence[str | Path]) -> set[int]:
    """Every label value found in the given segmentation files."""
    import nibabel as nib
    import numpy as np

    from .io.images import read_voxels

    values: set[int] = set()
    for p in paths:
        values.update(int(v) for v in np.unique(np.rint(read_voxels(nib.load(str(p)), p))))
    return values


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .cohort.discovery import cohort_from_folders, read_label_names
    from .evaluate.tables import value_label_names
    from .io.roi_names import label_names
    from .stages import aggregate_metrics, evaluate

    config = _config(args)
    preds = {c.case_id: c.image for c in cohort_from_folders(args.pred, warn=False).cases}  # volumes.csv is no case
    refs = {c.case_id: c.image for c in cohort_from_folders(args.ref, warn=False).cases}
    common = sorted(set(preds) & set(refs))
    if not common:
        raise ConfigError(f"no case names in common between {args.pred} and {args.ref}")
    sidecar = Path(args.pred) / f"{common[0]}.json"
    if args.labels:
        labels = read_label_names(args.labels)
    elif config["cohort"]["label_names"]:
        labels = label_names(config["cohort"]["label_names"])
    elif sidecar.exists():
        labels = read_label_names(sidecar)
    else:
        labels = value_label_names(sorted(_label_values([preds[c] for c in common] + [refs[c] for c in common])))
        print(f"no label map given: classes named by their values ({', '.join(labels.values()) or 'none'})")
    nsd = args.nsd_tolerance if args.nsd_tolerance is not None else config["evaluation"]["nsd_tolerance_mm"]
    with tempfile.TemporaryDirectory() as tmp:
        csvs = []
        for cid in common:
            out = Path(tmp) / f"{cid}.csv"
            evaluate(cid, preds[cid], refs[cid], out, labels=labels, nsd_tolerance_mm=nsd)
            csvs.append(out)
        summary_path = Path(args.output).with_suffix(".summary.json")
        aggregate_metrics(csvs, args.output, summary_path)
    print(f"metrics of {len(common)} case(s) written to {args.output} (summary: {summary_path})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``unet-pipeline`` argument parser."""
    p = argparse.ArgumentParser(
        prog="unet-pipeline",
        description="Batch CT segmentation with a 2D U-Net. The full workflow runs with `snakemake --cores N`; "
                    "these subcommands run its stages the same way, with the same defaults.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_demo_cohort(sub)
    _add_check_cohort(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    return p


def _cohort_args(q: argparse.ArgumentParser) -> None:
    """The options that name a cohort: a folder of images (and labels), a dataset.json or a manifest."""
    q.add_argument("-i", "--images", help="folder of images (NIfTI, NRRD, MHA or DICOM series folders)")
    q.add_argument("-l", "--labels", help="folder of labels, matched to images by file name")
    q.add_argument("--dataset-json", help="nnU-Net v2 / MSD dataset.json")
    q.add_argument("--manifest", help="CSV manifest with case_id,image[,label]")
    q.add_argument("--label-names", help="dataset.json whose 'labels' names the label values")


def _add_demo_cohort(sub) -> None:
    """The ``demo-cohort`` subcommand."""
    d = sub.add_parser("demo-cohort", help="write the synthetic demo CT cohort (NIfTI images, labels, dataset.json)")
    d.add_argument("out_dir", help="output folder (images/, labels/, dataset.json)")
    d.add_argument("--n-cases", type=int, default=16, help="number of cases (default 16)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.set_defaults(func=_cmd_demo_cohort)


def _add_check_cohort(sub) -> None:
    """The ``check-cohort`` subcommand."""
    c = sub.add_parser("check-cohort", help="validate every case of a cohort and list every problem; exit 1 if any case is unusable")
    _cohort_args(c)
    c.add_argument("-c", "--config", help="workflow config YAML: its cohort (when no -i/--dataset-json/--manifest is "
                   "given), label names, model.in_channels, plan.slice_axis and geometry tolerance, as the workflow "
                   "uses them")
    c.add_argument("--min-slices", type=int, default=None,
                   help="fewest slices a usable volume may have (default: model.in_channels of the config, 1)")
    c.add_argument("--geometry-tolerance-mm", type=float, default=None,
                   help="largest image/label spacing and origin difference in mm "
                        "(default: cohort.geometry_tolerance_mm of the config, 0.01)")
    c.set_defaults(func=_cmd_check_cohort)


def _add_train(sub) -> None:
    """The ``train`` subcommand."""
    t = sub.add_parser("train", help="train a U-Net on a labelled cohort, as the workflow does (same split, "
                       "stages and defaults); the held-out test cases are named at the end")
    _cohort_args(t)
    t.add_argument("-c", "--config", help="workflow config YAML (keys left out take the workflow's defaults); "
                   "-i/--dataset-json/--manifest replace its cohort")
    t.add_argument("-o", "--output", required=True, help="output model folder (model.safetensors, model.json, ...; "
                   "with split.folds = k, one fold_<i> folder per fold)")
    t.add_argument("--work-dir", help="folder for intermediate files and splits.json (default: a temporary folder)")
    t.add_argument("--epochs", type=int, help="override training.epochs")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="override training.max_minutes: time budget of the training run (0 = none); the model "
                        "of the best epoch within it is written")
    t.set_defaults(func=_cmd_train)


def _add_predict(sub) -> None:
    """The ``predict`` subcommand."""
    r = sub.add_parser("predict", help="segment NIfTI/NRRD/MHA/DICOM input with a trained model")
    r.add_argument("-m", "--model", required=True, nargs="+", help="model folder(s); several are ensembled")
    r.add_argument("-i", "--input", required=True,
                   help="an image file, a DICOM folder, a folder of images or a dataset.json")
    r.add_argument("-o", "--output", required=True, help="output folder: <case>.nii.gz + <case>.json per input")
    r.add_argument("-c", "--config", help="workflow config YAML: its inference and postprocess sections and "
                   "cohort.label_names (keys left out take the workflow's defaults)")
    r.add_argument("--label-names", help="dataset.json naming the cohort's label values: refused unless it names "
                   "the model's classes")
    r.add_argument("--device", default=None, help="auto (GPU if present), cpu or cuda (default: inference.device)")
    r.add_argument("--overlap", type=float, default=None,
                   help="tile overlap, a share of a tile (default: inference.overlap, 0.5)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: inference.batch_size; unset: 8 on a GPU, 1 on the CPU)")
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="mirroring test-time augmentation (default: inference.mirror_tta, off)")
    r.add_argument("--overwrite", action="store_true",
                   help="segment every case again (default: skip a case whose segmentation and sidecar JSON are "
                        "both there and readable)")
    r.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
                   help="for a DICOM series input, also write <case>.dcm, a DICOM-SEG referencing the series "
                        "(default: output.dicom_seg, off)")
    r.add_argument("--rtstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="for a DICOM series input, also write <case>_rtstruct.dcm, an RTSTRUCT of the same masks "
                        "(default: output.rtstruct, off)")
    r.set_defaults(func=_cmd_predict)


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand."""
    e = sub.add_parser("evaluate", help="metrics of predicted vs reference segmentations (matching case names)")
    e.add_argument("--pred", required=True, help="folder of predicted segmentations")
    e.add_argument("--ref", required=True, help="folder of reference segmentations")
    e.add_argument("-o", "--output", required=True, help="metrics CSV (a .summary.json is written beside it)")
    e.add_argument("--labels", help="dataset.json or sidecar JSON with the label names (default: cohort.label_names "
                   "of the config, else the predictions' sidecar JSON, else the values found, named label_<value>)")
    e.add_argument("-c", "--config", help="workflow config YAML: evaluation.nsd_tolerance_mm and cohort.label_names")
    e.add_argument("--nsd-tolerance", type=float, default=None,
                   help="NSD tolerance in mm (default: evaluation.nsd_tolerance_mm, 2)")
    e.set_defaults(func=_cmd_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unet-pipeline`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (CaseError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
