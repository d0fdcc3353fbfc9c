"""``unet-pipeline``: run the workflow's stages without Snakemake.

Subcommands: ``demo-cohort``, ``check-cohort``, ``train``, ``predict``, ``evaluate``. Each calls
the same :mod:`unet_pipeline.stages` functions as the Snakemake rules.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
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
    from .cohort import cohort_from_dataset_json, cohort_from_folders, cohort_from_manifest

    if args.dataset_json:
        return cohort_from_dataset_json(args.dataset_json)
    if args.manifest:
        return cohort_from_manifest(args.manifest)
    if args.images:
        return cohort_from_folders(args.images, args.labels, warn=warn)
    raise ConfigError("give -i IMAGES_DIR [-l LABELS_DIR], --dataset-json or --manifest")


def _label_names(args: argparse.Namespace, cohort) -> dict[int, str]:
    if getattr(args, "label_names", None):
        from .cohort import read_label_names

        return read_label_names(args.label_names)
    return cohort.labels


def _check_settings(args: argparse.Namespace):
    """``(cohort, label names, min slices, geometry tolerance)`` for check-cohort: the options,
    else the workflow config given with ``-c`` (its cohort, ``cohort.label_names``,
    ``model.in_channels``, ``cohort.geometry_tolerance_mm``), else the workflow's defaults."""
    import yaml

    from .cohort import discover_cohort

    cfg = {}
    if args.config:
        try:
            cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{args.config}: cannot read the config ({exc})") from exc
        if not isinstance(cfg, dict):
            raise ConfigError(f"{args.config}: not a workflow config (a YAML mapping)")
    cohort_cfg = cfg.get("cohort") or {}
    if args.images or args.dataset_json or args.manifest:
        cohort = _cohort_from_args(args, warn=False)
    elif args.config:
        if (cohort_cfg.get("demo") or {}).get("enabled"):
            raise ConfigError(f"{args.config}: cohort.demo.enabled is set: the workflow would run the built-in demo "
                              "cohort, not cohort.images/dataset_json/manifest; disable the demo to check them")
        cohort = discover_cohort(cohort_cfg, warn=False)
    else:
        raise ConfigError("give -c CONFIG, -i IMAGES_DIR [-l LABELS_DIR], --dataset-json or --manifest")
    if cohort_cfg.get("label_names") and not args.label_names:
        labels = {int(k): str(v) for k, v in cohort_cfg["label_names"].items()}
    else:
        labels = _label_names(args, cohort)
    min_slices = args.min_slices if args.min_slices is not None else int((cfg.get("model") or {}).get("in_channels", 1))
    tolerance = args.geometry_tolerance_mm if args.geometry_tolerance_mm is not None else \
        float(cohort_cfg.get("geometry_tolerance_mm", 0.01))
    return cohort, labels, min_slices, tolerance


def _cmd_check_cohort(args: argparse.Namespace) -> int:
    from collections import Counter

    from .cohort import CaseCheck, check_case, screen_cases

    cohort, labels, min_slices, tolerance = _check_settings(args)
    _, rejected = screen_cases(cohort.cases, cohort.problems)
    print(f"checking {len(cohort.cases)} case(s): label names {labels or '(none)'}, at least {min_slices} slice(s), "
          f"geometry tolerance {tolerance:g} mm")
    for note in cohort.notes:
        print(f"note: {note}")
    folders = Counter(c.image for c in cohort.cases)
    rows, n_bad, n_warn = [], 0, 0
    for spec in cohort.cases:
        try:
            check = check_case(spec, labels, min_slices=min_slices, geometry_tolerance_mm=tolerance)
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
    import yaml

    from .cohort import split_cases
    from .stages import fingerprint, import_case, import_label, preprocess, preprocess_label, slice_case, train

    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    cohort = _cohort_from_args(args)
    labels = _label_names(args, cohort) or {int(k): v for k, v in (cfg.get("cohort", {}).get("label_names") or {}).items()}
    if not labels:
        raise ConfigError("no label names: give --label-names dataset.json or use a dataset.json cohort")
    labelled = [c for c in cohort.cases if c.label]
    if not labelled:
        raise ConfigError("no labelled cases to train on")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="unet-pipeline-"))
    seed = int(cfg.get("split", {}).get("seed", 0))
    train_ids, val_ids = split_cases([c.case_id for c in labelled], float(cfg.get("split", {}).get("val_fraction", 0.2)), seed)
    by_id = cohort.by_id()
    for cid in train_ids + val_ids:
        spec = by_id[cid]
        imp = work / "imported" / cid
        import_case(cid, spec.image, spec.label, imp, labels=labels)
        import_label(spec.label, imp / "image.nii.gz", imp / "label.nii.gz", labels=labels)
    plan_cfg = cfg.get("plan", {})
    fingerprint([(c, work / "imported" / c) for c in train_ids], work / "plan.json", labels=labels,
                target_spacing_mm=plan_cfg.get("target_spacing_mm"), patch_size=plan_cfg.get("patch_size"),
                max_patch=int(plan_cfg.get("max_patch", 256)), seed=seed)
    loss = dict(cfg.get("loss", {}))
    for cid in train_ids + val_ids:
        pre = work / "preprocessed" / cid
        preprocess(cid, work / "imported" / cid / "image.nii.gz", work / "plan.json", pre)
        preprocess_label(work / "imported" / cid / "label.nii.gz", pre / "meta.json", pre / "label.npy")
        slice_case(pre, work / "plan.json", work / "slices" / cid, weight_map=loss.get("name") == "weighted_ce")
    training = dict(cfg.get("training", {}))
    if args.epochs:
        training["epochs"] = args.epochs
    train(train_ids, val_ids, preprocessed_root=work / "preprocessed", slices_root=work / "slices",
          plan_path=work / "plan.json", out_dir=args.output, model=cfg.get("model", {}), training=training,
          augment=cfg.get("augment", {}), loss=loss)
    print(f"model written to {args.output}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .cohort import cohort_from_folders
    from .io import is_image_file
    from .naming import case_id_from_path
    from .stages import predict_cohort

    src = Path(args.input)
    if src.is_file() or (src.is_dir() and not any(is_image_file(p) or p.is_dir() for p in src.iterdir())):
        inputs = [(case_id_from_path(src), str(src))]
    else:
        inputs = [(c.case_id, c.image) for c in cohort_from_folders(src).cases]
    with tempfile.TemporaryDirectory(prefix="unet-predict-") as work:
        status = predict_cohort(args.model, inputs, args.output, work_dir=work,
                                inference={"device": args.device, "overlap": args.overlap,
                                           "batch_size": args.batch_size, "mirror_tta": args.tta})
    failed = {k: v for k, v in status.items() if v != "ok"}
    print(f"{len(status) - len(failed)} of {len(status)} case(s) segmented into {args.output} "
          f"(volumes and QC flags: {Path(args.output) / 'volumes.csv'})")
    for cid, err in failed.items():
        print(f"  FAILED {cid}: {err}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .cohort import cohort_from_folders
    from .stages import aggregate_metrics, evaluate

    preds = {c.case_id: c.image for c in cohort_from_folders(args.pred).cases}
    refs = {c.case_id: c.image for c in cohort_from_folders(args.ref).cases}
    common = sorted(set(preds) & set(refs))
    if not common:
        raise ConfigError(f"no case names in common between {args.pred} and {args.ref}")
    from .cohort import read_label_names

    if args.labels:
        labels = read_label_names(args.labels)
    else:
        sidecar = Path(args.pred) / f"{common[0]}.json"
        labels = read_label_names(sidecar) if sidecar.exists() else {}
    if not labels:
        raise ConfigError("no label names: give --labels (a dataset.json or a segmentation sidecar .json)")
    with tempfile.TemporaryDirectory() as tmp:
        csvs = []
        for cid in common:
            out = Path(tmp) / f"{cid}.csv"
            evaluate(cid, preds[cid], refs[cid], out, labels=labels, nsd_tolerance_mm=args.nsd_tolerance)
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
                    "these subcommands run single stages.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo-cohort", help="write the synthetic demo CT cohort (NIfTI images, labels, dataset.json)")
    d.add_argument("out_dir", help="output folder (images/, labels/, dataset.json)")
    d.add_argument("--n-cases", type=int, default=16, help="number of cases (default 16)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.set_defaults(func=_cmd_demo_cohort)

    def cohort_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("-i", "--images", help="folder of images (NIfTI, NRRD, MHA or DICOM series folders)")
        q.add_argument("-l", "--labels", help="folder of labels, matched to images by file name")
        q.add_argument("--dataset-json", help="nnU-Net v2 / MSD dataset.json")
        q.add_argument("--manifest", help="CSV manifest with case_id,image[,label]")
        q.add_argument("--label-names", help="dataset.json whose 'labels' names the label values")

    c = sub.add_parser("check-cohort", help="validate every case of a cohort and list every problem; exit 1 if any case is unusable")
    cohort_args(c)
    c.add_argument("-c", "--config", help="workflow config YAML: its cohort (when no -i/--dataset-json/--manifest is "
                   "given), label names, model.in_channels and geometry tolerance, as the workflow uses them")
    c.add_argument("--min-slices", type=int, default=None,
                   help="fewest slices a usable volume may have (default: model.in_channels of -c, else 1)")
    c.add_argument("--geometry-tolerance-mm", type=float, default=None,
                   help="largest image/label spacing and origin difference in mm "
                        "(default: cohort.geometry_tolerance_mm of -c, else 0.01)")
    c.set_defaults(func=_cmd_check_cohort)

    t = sub.add_parser("train", help="train a U-Net on a labelled cohort")
    cohort_args(t)
    t.add_argument("-c", "--config", help="config YAML (sections plan, model, loss, augment, training, split)")
    t.add_argument("-o", "--output", required=True, help="output model folder (model.safetensors, model.json, ...)")
    t.add_argument("--work-dir", help="folder for intermediate files (default: a temporary folder)")
    t.add_argument("--epochs", type=int, help="override training.epochs")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("predict", help="segment NIfTI/NRRD/MHA/DICOM input with a trained model")
    r.add_argument("-m", "--model", required=True, nargs="+", help="model folder(s); several are ensembled")
    r.add_argument("-i", "--input", required=True, help="an image file, a DICOM folder or a folder of images")
    r.add_argument("-o", "--output", required=True, help="output folder: <case>.nii.gz + <case>.json per input")
    r.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    r.add_argument("--overlap", type=float, default=0.5, help="tile overlap (share of a tile, default 0.5)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: 8 on a GPU, 1 on the CPU, the fastest there)")
    r.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    r.set_defaults(func=_cmd_predict)

    e = sub.add_parser("evaluate", help="metrics of predicted vs reference segmentations (matching case names)")
    e.add_argument("--pred", required=True, help="folder of predicted segmentations")
    e.add_argument("--ref", required=True, help="folder of reference segmentations")
    e.add_argument("-o", "--output", required=True, help="metrics CSV (a .summary.json is written beside it)")
    e.add_argument("--labels", help="dataset.json or sidecar JSON with the label names")
    e.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    e.set_defaults(func=_cmd_evaluate)
    return p


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
