"""nnU-Net v2 beside ours and MONAI's in :mod:`bench.bench_realdata`: the parent's side.

nnU-Net is a benchmark-only extra that lives in its own virtual environment
(``bench/setup_nnunet.sh``); this module never imports it. It writes nnU-Net's raw dataset and the
test scans in one storage order, runs :mod:`bench.nnunet_child` with that environment's Python and
brings the predictions back onto each reference's grid, so that ``bench_realdata.score`` scores
all three recipes the same way.

Why one storage order: nnU-Net reads the voxel array as stored and does not reorient it (its
2D configuration slices along the first axis of SimpleITK's ``(z, y, x)`` order), so a test scan
stored in another axis order or direction than the training scan would be cut into other planes.
Every image nnU-Net sees is reoriented to :data:`ORIENTATION` (RAS, the training scan's own
order), and each prediction is reoriented back to its reference's order before scoring
(:func:`to_orientation` is exact: it permutes and flips axes, nothing is resampled).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

__all__ = ["ORIENTATION", "DATASET", "default_python", "to_orientation", "onto_grid", "write_inputs", "run"]

ROOT = Path(__file__).resolve().parents[1]
#: axis codes of every image given to nnU-Net (the training scan's own order)
ORIENTATION = ("R", "A", "S")
#: nnU-Net's dataset name (``Dataset<3-digit id>_<name>``)
DATASET = "Dataset001_RealData"
#: the nnU-Net venv's Python: ``$UNET_BENCH_NNUNET_PYTHON``, else this, beside the repository
DEFAULT_VENV = ROOT.parent / "nnunet-venv"


def default_python() -> Path:
    """The nnU-Net venv's Python: ``$UNET_BENCH_NNUNET_PYTHON`` or ``../nnunet-venv/bin/python``
    beside the repository (where ``bench/setup_nnunet.sh`` puts it by default)."""
    env = os.environ.get("UNET_BENCH_NNUNET_PYTHON")
    return Path(env) if env else DEFAULT_VENV / "bin" / "python"


def to_orientation(img, codes: tuple[str, str, str] = ORIENTATION, dtype=None):
    """``img`` (a 3-D nibabel image) with its voxel axes permuted and flipped so that they run
    towards the axis codes ``codes`` (``("R", "A", "S")``: the first axis towards the patient's
    right, the second anterior, the third superior). No interpolation: every voxel keeps its value
    and its position in mm, the affine follows. Returns a fresh ``Nifti1Image`` (sform and qform
    set from the affine, code 1) with the voxels as ``dtype`` (default: the stored dtype)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    if len(img.shape) != 3:
        raise ValueError(f"img: expected a 3-D image, got shape {img.shape}")
    if sorted("".join(codes).upper().translate(str.maketrans("LPI", "RAS"))) != ["A", "R", "S"]:
        raise ValueError(f"codes: expected 3 axis codes such as ('R', 'A', 'S'), got {codes!r}")
    target = axcodes2ornt(codes)
    transform = ornt_transform(io_orientation(img.affine), target)
    turned = img.as_reoriented(transform)
    data = np.asarray(turned.dataobj)
    out = nib.Nifti1Image(data.astype(dtype if dtype is not None else data.dtype), turned.affine)
    out.set_sform(turned.affine, code=1)
    out.set_qform(turned.affine, code=1)
    return out


def onto_grid(pred_path: Path, ref_path: Path, out_path: Path, atol_mm: float = 1e-3) -> Path:
    """Write to ``out_path`` the segmentation ``pred_path`` (uint8 labels, on the reoriented copy of
    the reference's scan) reoriented to the storage order of ``ref_path``. Raises
    ``AssertionError`` when the result's grid is not the reference's (shape, or affine beyond
    ``atol_mm``): the prediction was not made on a reorientation of that scan."""
    import nibabel as nib

    ref = nib.load(str(ref_path))
    back = to_orientation(nib.load(str(pred_path)), nib.aff2axcodes(ref.affine), dtype=np.uint8)
    if back.shape != ref.shape[:3] or not np.allclose(back.affine, ref.affine, atol=atol_mm):
        raise AssertionError(f"{pred_path} reoriented is not on the grid of {ref_path}:\n{back.affine}\n{ref.affine}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(back.dataobj), ref.affine), str(out_path))
    return out_path


def write_inputs(work: Path, train_image: Path, train_label: Path, tests: dict[str, Path],
                 labels: dict[int, str]) -> dict:
    """nnU-Net's raw dataset (one training case, channel ``CT``) and the test scans, all in
    :data:`ORIENTATION`, under ``work``. ``labels``: value -> class name (0 is background).
    Returns the child's arguments: the nnU-Net folders and ``{test name: image path}``."""
    import nibabel as nib

    raw = work / "nnUNet_raw" / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    nib.save(to_orientation(nib.load(str(train_image)), dtype=np.int16), str(raw / "imagesTr" / "ts_0000.nii.gz"))
    nib.save(to_orientation(nib.load(str(train_label)), dtype=np.uint8), str(raw / "labelsTr" / "ts.nii.gz"))
    dataset = {"channel_names": {"0": "CT"},
               "labels": {"background": 0, **{name: int(value) for value, name in sorted(labels.items())}},
               "numTraining": 1, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    test_paths = {}
    for name, path in tests.items():
        test_paths[name] = raw / "imagesTs" / f"{name}_0000.nii.gz"
        nib.save(to_orientation(nib.load(str(path)), dtype=np.int16), str(test_paths[name]))
    return {"raw": str(work / "nnUNet_raw"), "preprocessed": str(work / "nnUNet_preprocessed"),
            "results": str(work / "nnUNet_results"), "dataset": DATASET, "out": str(work / "predictions"),
            "tests": {name: str(p) for name, p in test_paths.items()}}


def run(work: Path, python: Path, train_image: Path, train_label: Path, tests: dict[str, tuple[Path, Path]],
        labels: dict[int, str], minutes: float, da_processes: int = 1) -> dict:
    """Plan, preprocess, train for ``minutes`` and predict with nnU-Net v2 (``2d``, fold ``all``)
    in a child process run by ``python`` (the nnU-Net venv). ``tests``: name -> (image, reference).
    Returns the child's timings plus ``{"segmentations": {name: path on the reference's grid}}``;
    raises ``RuntimeError`` with the tail of the child's log when it fails."""
    args = write_inputs(work, train_image, train_label, {n: img for n, (img, _) in tests.items()}, labels)
    args.update(minutes=float(minutes), da_processes=int(da_processes), result=str(work / "result.json"))
    (work / "args.json").write_text(json.dumps(args, indent=2), encoding="utf-8")
    log = work / "child.log"
    env = {**os.environ, "nnUNet_raw": args["raw"], "nnUNet_preprocessed": args["preprocessed"],
           "nnUNet_results": args["results"]}
    env.pop("PYTHONPATH", None)  # the child runs in its own venv, not on this repository's packages
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run([str(python), str(ROOT / "bench" / "nnunet_child.py"), str(work / "args.json")],
                              stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env, check=False)
    if done.returncode != 0 or not Path(args["result"]).is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"nnU-Net child failed (exit {done.returncode}), log {log}:\n{tail}")
    result = json.loads(Path(args["result"]).read_text(encoding="utf-8"))
    result["segmentations"] = {
        name: str(onto_grid(Path(result["predictions"][name]), ref, work / "on_reference_grid" / f"{name}.nii.gz"))
        for name, (_, ref) in tests.items()}
    return result
