"""The benchmarks' correctness side on tiny inputs: results equal (within tolerance) to the reference.

Each bench module has a ``check(...)`` that runs the project and the library it is compared with
on small data from the bench's own generator, without timing anything. These tests assert the
values only (tolerances, equalities); the timings are the benchmarks' business, never the tests'.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from bench import bench_elastic, bench_forward, bench_inference, bench_metrics, bench_preprocess
from unet_pipeline.model.unet import UNetConfig


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_equal_monai_within_1e4_relative():
    result = bench_metrics.check(shape=(64, 64, 24))
    ours, theirs = result["ours"], result["monai"]
    assert set(ours) == set(theirs) == set(bench_metrics.LABELS.values())
    for name in ours:
        dice, hd95, assd, nsd = ours[name]
        # The generator's prediction is a shifted, eroded/dilated reference: imperfect, not degenerate.
        assert 0.3 < dice < 0.95 and 0.3 < nsd < 1.0
        assert hd95 > 0.0 and assd > 0.0
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=0)
    assert result["max_relative_difference"] <= 1e-4


# -- tiled inference -----------------------------------------------------------------------------


def test_tiled_inference_probabilities_within_1e4_of_monai():
    result = bench_inference.check(n=2, size=320, tile=256, base_channels=4, depth=2)
    ours, theirs = result["ours"], result["monai"]
    assert ours.shape == theirs.shape == (2, bench_inference.NUM_CLASSES, 320, 320)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)
    assert ours.std() > 0.01  # a random network still gives spatially varying probabilities
    assert result["max_abs_probability_difference"] <= 1e-4
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_inference_slices_generator_keeps_the_full_size_layout():
    full = bench_inference._slices(2)
    assert full.shape == (2, 1, 512, 512)
    small = bench_inference._slices(2, size=128)
    # Same anatomy scaled: the body covers the same share of the slice (noise aside).
    assert abs((full > -1.5).mean() - (small > -1.5).mean()) < 0.02


# -- preprocessing -------------------------------------------------------------------------------


def test_preprocessing_agrees_with_the_monai_pipeline():
    result = bench_preprocess.check(n_slices=6)
    ours, theirs = result["shapes_zyx"]["ours"], result["shapes_zyx"]["monai"]
    assert ours[0] == theirs[0] == 6  # slice thickness kept by both
    # 512 px of 0.8 mm at 1.2 mm: ~341 px; the two resamplers round the grid size differently.
    assert all(abs(a - b) <= 1 and abs(a - 512 * 0.8 / 1.2) <= 1.5 for a, b in zip(ours[1:], theirs[1:]))
    # Orientation and resampling agree: every organ overlaps MONAI's almost perfectly (a flipped axis
    # would move the off-centre organs and drop these far below).
    assert set(result["label_dice"]) == {1, 2, 3}
    assert min(result["label_dice"].values()) > 0.95
    assert result["label_agreement"] > 0.99
    assert result["image_median_abs_diff_z"] < 0.1


# -- elastic deformation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def elastic():
    return bench_elastic.check(batch=4)


@pytest.mark.parametrize("which", ["ours", "monai"])
def test_elastic_deformation_outputs_are_valid(elastic, which):
    image, label = elastic["image"], elastic["label"]
    out_image, out_label = elastic[which]
    assert out_image.shape == image.shape == (4, 1, *bench_elastic.SIZE)
    assert out_label.shape == label.shape and out_label.dtype == torch.int64
    assert torch.isfinite(out_image).all()
    assert set(torch.unique(out_label).tolist()) == {0, 1, 2}  # nearest: no new label values
    changed = out_label != label
    share = changed.float().mean().item()
    assert 0.01 < share < 0.3, share  # deformed, by a few pixels (sigma 10 px), not scrambled
    # Image and label moved by the same field: where the label changed, the deformed image (label +
    # noise, bilinear) follows the deformed label, not the original one.
    follows_new = (out_image[:, 0] - out_label.float())[changed].abs().mean().item()
    follows_old = (out_image[:, 0] - label.float())[changed].abs().mean().item()
    assert follows_new < 0.25 and follows_old > 1.0, (follows_new, follows_old)
    for value in (1, 2):  # organ areas roughly kept
        ratio = (out_label == value).sum().item() / (label == value).sum().item()
        assert 0.7 < ratio < 1.4, (value, ratio)


def test_elastic_deformation_strength_comparable_to_monai(elastic):
    """The bench's MONAI parameters (spacing of a 3 x 3 lattice, magnitude = sigma) deform about as much."""
    label = elastic["label"]
    ours = (elastic["ours"][1] != label).float().mean().item()
    theirs = (elastic["monai"][1] != label).float().mean().item()
    assert 0.5 < ours / theirs < 2.0, (ours, theirs)


# -- forward FLOPs -------------------------------------------------------------------------------


def _conv(n: int, h: int, w: int, c_in: int, c_out: int, k: int) -> int:
    """FlopCounterMode's count of a convolution: 2 x multiply-accumulates (bias not counted)."""
    return 2 * n * h * w * c_in * c_out * k * k


def _unet_flops_by_hand(cfg: UNetConfig, size: int, batch: int = 1) -> int:
    """Walk the U-Net level by level (sizes of valid or padded 3 x 3 convolutions) and add up the FLOPs."""
    shrink = 0 if cfg.padded else 2
    chans = [cfg.base_channels * 2 ** i for i in range(cfg.depth + 1)]
    total, s, c_prev, skips = 0, size, cfg.in_channels, []
    for level in range(cfg.depth + 1):
        s -= shrink
        total += _conv(batch, s, s, c_prev, chans[level], 3)
        s -= shrink
        total += _conv(batch, s, s, chans[level], chans[level], 3)
        c_prev = chans[level]
        if level < cfg.depth:
            skips.append(s)
            s //= 2
    for level in reversed(range(cfg.depth)):
        # 2 x 2 up-convolution, stride 2: every input pixel meets c_in x c_out x 2 x 2 weights.
        total += _conv(batch, s, s, chans[level + 1], chans[level], 2)
        s *= 2
        s -= shrink
        total += _conv(batch, s, s, 2 * chans[level], chans[level], 3)
        s -= shrink
        total += _conv(batch, s, s, chans[level], chans[level], 3)
    return total + _conv(batch, s, s, chans[0], cfg.num_classes, 1)


def test_flop_count_of_a_depth1_unet_by_hand():
    cfg = UNetConfig(num_classes=3, in_channels=1, base_channels=4, depth=1, padded=True, norm="none")
    n, hw, c, k = 2, 32 * 32, 4, 3
    expected = (2 * n * hw * 9 * (1 * c + c * c)                 # two 3 x 3 convolutions at 32 x 32
                + 2 * n * (hw // 4) * 9 * (c * 2 * c + 2 * c * 2 * c)  # bottleneck at 16 x 16
                + 2 * n * (hw // 4) * 2 * c * c * 4              # 2 x 2 up-convolution from 16 x 16
                + 2 * n * hw * 9 * (2 * c * c + c * c)           # after the concatenation, at 32 x 32
                + 2 * n * hw * c * k)                            # 1 x 1 head
    assert expected == 3_571_712
    assert bench_forward.count_flops(cfg, 32, batch=2) == expected
    assert bench_forward.count_flops(cfg, 32, batch=2) == _unet_flops_by_hand(cfg, 32, batch=2)
    assert bench_forward.check(cfg, size=32, batch=2)["flops"] == expected


@pytest.mark.parametrize("cfg, size", [
    (UNetConfig(num_classes=5, base_channels=8, depth=3, norm="instance"), 64),
    (UNetConfig(num_classes=2, base_channels=4, depth=2, padded=False, norm="none"), 92),
])
def test_flop_count_matches_the_level_walk(cfg, size):
    assert bench_forward.count_flops(cfg, size) == _unet_flops_by_hand(cfg, size)


def test_paper_network_flops():
    paper = bench_forward.PAPER_UNPADDED
    flops = bench_forward.count_flops(paper, 572)
    assert flops == _unet_flops_by_hand(paper, 572)
    assert round(flops / 1e9, 1) == 300.9  # per 572 x 572 tile (388 x 388 out)
    demo, _ = bench_forward.demo_config()
    padded = bench_forward.paper_config(demo)
    assert (padded.base_channels, padded.depth, padded.padded) == (64, 4, True)
    per_slice = bench_forward.count_flops(padded, 512)
    assert round(per_slice / 1e9) == 385  # the issue's ~385 GFLOP per 512 x 512 slice
    assert per_slice == 4 * bench_forward.count_flops(padded, 256)  # padded: FLOPs scale with the area


def test_demo_config_is_the_configured_model():
    from unet_pipeline.config import load_config

    cfg = load_config(bench_forward.CONFIG)  # the demo's config with the schema's defaults
    demo, tile = bench_forward.demo_config()
    for key in ("padded", "base_channels", "depth", "norm", "upsample", "in_channels"):
        assert getattr(demo, key) == cfg["model"][key], key
    assert tile == (max(cfg["plan"]["patch_size"]) if cfg["plan"]["patch_size"] else cfg["plan"]["max_patch"])
    assert bench_forward.count_flops(demo, 512) == 4 * bench_forward.count_flops(demo, 256)


def test_channels_last_logits_equal_contiguous():
    cfg = UNetConfig(num_classes=5, base_channels=4, depth=2, norm="instance")
    result = bench_forward.check(cfg, size=32, batch=2)
    assert result["output_shape"] == [2, 5, 32, 32]
    assert result["channels_last_output"]
    assert result["max_abs_logit"] > 0.1
    assert result["max_abs_diff_channels_last"] <= 1e-4 * max(1.0, result["max_abs_logit"])


def test_forward_rates_are_consistent_with_the_flop_count():
    """The timing plumbing on a tiny network: every variant present; the derived figures agree with each
    other (arithmetic only: no value of any timing is asserted)."""
    cfg = UNetConfig(num_classes=5, base_channels=4, depth=2)
    seconds, diff = bench_forward._time(cfg, 32, torch.device("cpu"), (1, 2), repeats=1, tiles_per_sample=2,
                                        before=True)
    from unet_pipeline.model.tiling import autocast_dtype

    expected = {"b1_contiguous", "b1_channels_last", "b2_contiguous", "b2_channels_last", "b1_before"}
    if autocast_dtype("auto", "cpu") is not None:  # the predictor's bfloat16 variant on a CPU with AMX
        expected.add(f"b{bench_forward.PREDICTOR_BATCH_CPU}_channels_last_bf16")
    assert set(seconds) == expected
    assert diff <= 1e-4
    flops = bench_forward._flop_figures(cfg, 32, 256)
    assert flops["tiles_per_slice_tiled"] == 9  # 512 px covered by tiles of 256 at overlap 0.5: 3 x 3
    rates = bench_forward._rates(seconds, flops)
    for name, r in rates.items():
        median, fastest = seconds[name]
        assert fastest <= median
        assert r["tiles_per_s"] == pytest.approx(1 / median, rel=1e-2)
        assert r["gflops"] == pytest.approx(flops["_flops_tile"] / median / 1e9, rel=0.05, abs=0.05)
        assert r["gflops_fastest"] >= r["gflops"]
        # A 512 x 512 slice in one pass costs 4 tiles of 256 (padded network), tiled at overlap 0.5: 9.
        assert r["slices_per_s"] == pytest.approx(r["slices_per_s_tiled"] * 9 / 4, rel=1e-2, abs=2e-3)


# -- real data -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_realdata_benchmark_segments_both_tests_on_their_grids_with_both_recipes():
    """Plumbing of bench_realdata on the real scans: a few steps of ours and seconds of MONAI; every
    segmentation lies on its input's grid (checked inside) and is scored per class."""
    from bench import bench_realdata

    if not (bench_realdata.DATA / "totalsegmentator-example").is_dir():
        pytest.skip(f"real CT data not found at {bench_realdata.DATA} (../shared/data)")
    result = bench_realdata.check(steps=4, monai_minutes=0.05)
    assert result["ours"]["steps"] == 4 and result["monai"]["steps"] >= 1
    assert all(40 <= shift <= 60 for shift in result["venous_shifts_hu"].values())
    for side in ("ours", "monai"):
        assert set(result[side]["dcmqi_liver"]) == {"liver"}
        assert set(result[side]["ts_venous"]) == {"liver", "spleen", "kidney_right", "kidney_left"}
        # Absent classes: the painted volume of each, on both scans without them; Dice of those present.
        fp = result[side]["absent_fp_ml"]
        assert {t: set(v) for t, v in fp.items()} == {t: set(names) for t, names in bench_realdata.ABSENT.items()}
        assert all(ml >= 0 for v in fp.values() for ml in v.values())
        assert set(result[side]["ts_cropped"]) == {"liver", "spleen"}
    # The headline is read from the per-class figures: ours behind MONAI exactly where its Dice is lower.
    ours, theirs = result["ours"], result["monai"]
    behind = [f"{test}:{name}" for test in ("dcmqi_liver", "ts_venous") for name in ours[test]
              if ours[test][name]["dice"] < theirs[test][name]["dice"]]
    assert result["classes_behind_monai"] == behind
    assert result["liver_dice_dcmqi"] == ours["dcmqi_liver"]["liver"]["dice"]
    assert result["liver_dice_venous_monai"] == theirs["ts_venous"]["liver"]["dice"]
    assert result["mean_dice_venous"] == pytest.approx(np.mean([f["dice"] for f in ours["ts_venous"].values()]), abs=1e-4)
    # The review list's calls, read from each test's review.csv, counted over what was segmented.
    assert set(ours["review"]) == {"dcmqi", "venous", "cropped", "sts"}
    flags = [f for test in ours["review"].values() for f in test.values()]
    assert all(isinstance(f["absent_suspected"], bool) and f["reason"] for f in flags)
    flagged, segmented = (int(n) for n in result["absent_flagged"].split("/"))
    assert 0 <= flagged <= segmented == sum(cls in bench_realdata.ABSENT[name] for test, name in
                                            (("cropped", "ts_cropped"), ("sts", "sts_extremity"))
                                            for cls in ours["review"][test])


def test_realdata_scores_are_the_metrics_of_the_masks(tmp_path):
    """``score`` (what the benchmark reports): the reference against itself scores Dice 1 and HD95 0,
    a prediction missing one class scores Dice 0 there, and a mask off the reference's grid is refused."""
    from bench import bench_realdata
    from tests.conftest import make_ct, save_nifti

    _, label, affine = make_ct()
    ref = save_nifti(tmp_path / "ref.nii.gz", label, affine)
    missing = save_nifti(tmp_path / "pred.nii.gz", np.where(label == 2, 0, label).astype(np.uint8), affine)
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    off_grid = save_nifti(tmp_path / "off.nii.gz", label, shifted)
    classes = {1: "liver", 2: "spleen"}
    same = bench_realdata.score(ref, ref, classes)
    assert same == {"liver": {"dice": 1.0, "hd95_mm": 0.0}, "spleen": {"dice": 1.0, "hd95_mm": 0.0}}
    partial = bench_realdata.score(missing, ref, classes)
    assert partial["liver"]["dice"] == 1.0 and partial["spleen"]["dice"] == 0.0
    with pytest.raises(AssertionError, match="not on the grid"):
        bench_realdata.score(off_grid, ref, classes)


def test_realdata_fp_volume_is_voxels_times_the_voxel_volume_of_the_affine(tmp_path):
    """``fp_volume_ml`` (the absent-class score): voxel count x |det| of the affine's 3 x 3 part, per
    class; 0 for a class not painted; a flipped axis counts the same."""
    from bench import bench_realdata
    from tests.conftest import save_nifti

    pred = np.zeros((6, 5, 4), np.uint8)
    pred[0:2, 0:2, 0:2] = 3  # 8 voxels
    pred[5, 4, 3] = 4  # 1 voxel
    affine = np.diag([-2.0, 1.5, 3.0, 1.0])  # 9 mm^3 = 0.009 mL a voxel
    path = save_nifti(tmp_path / "pred.nii.gz", pred, affine)
    assert bench_realdata.fp_volume_ml(path, {3: "kidney_right", 4: "kidney_left", 1: "liver"}) == {
        "kidney_right": 0.072, "kidney_left": 0.009, "liver": 0.0}


def test_forward_before_variant_is_the_same_network_with_torch_instance_norm():
    """``b1_before`` (the former predictor path, torch's InstanceNorm2d, frozen) computes the logits of
    the shipped network: the speed ratio compares two ways of computing one function."""
    cfg = UNetConfig(num_classes=5, base_channels=4, depth=2)
    model = bench_forward._models(cfg, torch.device("cpu"))["contiguous"]
    x = torch.randn(1, 1, 32, 32)
    before = bench_forward._before(model, tuple(x.shape))
    with torch.inference_mode():
        torch.testing.assert_close(before(x), model(x), atol=1e-4, rtol=1e-4)


# -- review list on real CT ----------------------------------------------------------------------


def test_qc_ranking_figures_are_computed_from_the_rows():
    """``evaluate_ranking`` (what bench_qc reports): Spearman over rows with a score, bad rows counted in
    the first 20 % of the list ordered by the score (undefined scores last)."""
    from bench import bench_qc

    rows = [{"true_dice": d, "s": s, "class": c} for d, s, c in (
        (0.1, 0.2, "a"), (0.95, 0.9, "a"), (0.5, float("nan"), "b"), (0.9, 0.8, "b"), (0.85, 0.85, "a"),
        (0.3, 0.95, "b"), (0.97, 0.99, "a"), (0.92, 0.7, "b"), (0.99, 0.97, "b"), (0.88, 0.75, "a"))]
    fig = bench_qc.evaluate_ranking(rows, "s")
    assert fig["n_scored"] == 9 and fig["n_top"] == 2 and fig["n_bad"] == 3
    assert fig["bad_in_top"] == 1 and fig["bad_in_top_share"] == pytest.approx(1 / 3, abs=1e-4)  # 0.1 first; 0.3 and 0.5 not
    # The first 3 rows (as many as the bad ones): 0.1 (s 0.2), 0.92 (s 0.7), 0.88 (s 0.75): one bad.
    assert fig["recall_at_n_bad"] == pytest.approx(1 / 3, abs=1e-4)
    # Class a: s and Dice in the same order but 0.88/0.85 swapped -> rho 1 - 6 * 2 / 120 = 0.9; class b, 4 scored
    # rows, rank pairs (s, Dice) (2, 2), (3, 1), (1, 3), (4, 4) -> rho 1 - 6 * 8 / 60 = 0.2.
    assert fig["spearman_by_class"]["a"] == pytest.approx(0.9) and fig["spearman_by_class"]["b"] == pytest.approx(0.2)
    assert fig["spearman_within_class"] == pytest.approx(0.55)
    from scipy.stats import spearmanr

    scored = [r for r in rows if r["s"] == r["s"]]
    expected = spearmanr([r["s"] for r in scored], [r["true_dice"] for r in scored]).statistic
    assert fig["spearman"] == pytest.approx(expected, abs=1e-4)


def test_qc_seeds_are_tallied_against_the_targets_and_the_baseline(monkeypatch):
    """``run_seeds`` runs one model per seed and counts, from each seed's figures, who meets the
    targets and where the list is ahead of, or behind, the baseline."""
    from bench import bench_qc

    def fig(rho, bad, n_bad=10):
        return {"spearman": rho, "spearman_within_class": rho, "bad_in_top": bad, "n_bad": n_bad, "n_top": 10,
                "bad_in_top_share": bad / n_bad, "recall_at_n_bad": bad / n_bad}

    figures = {0: (fig(0.9, 9), fig(0.8, 8)), 1: (fig(0.9, 8), fig(0.8, 8)), 2: (fig(0.6, 7), fig(0.7, 9))}
    seen = []

    def run(seed, **kwargs):
        seen.append((seed, kwargs))
        ours, base = figures[seed]
        return {"ours": ours, "baseline_max_softmax": base, "calibration": {"features": ["soft_dice_near"]},
                "by_degradation_group": {"unseen": {}}, "times": {},
                "ahead_of_baseline_on_both": ours["spearman"] > base["spearman"]
                and ours["bad_in_top_share"] > base["bad_in_top_share"]}

    monkeypatch.setattr(bench_qc, "run", run)
    tally = bench_qc.run_seeds([0, 1, 2], steps=600, cache=None)
    assert [s for s, _ in seen] == [0, 1, 2] and all(kw == {"steps": 600, "cache": None} for _, kw in seen)
    assert tally["n_seeds"] == 3 and list(tally["seeds"]) == ["0", "1", "2"]
    assert tally["seeds_meeting_targets"] == 2 and tally["seeds_meeting_targets_baseline"] == 3
    assert tally["seeds_ahead_on_both"] == 1 and tally["seeds_ahead_on_spearman"] == 2
    assert tally["seeds_behind_on_bad_rows"] == 1 and tally["seeds"]["0"]["primary"] == "soft_dice_near"


def test_qc_variants_degrade_the_scan_as_named():
    from bench import bench_qc

    rng = np.random.default_rng(0)
    hu = np.zeros((20, 16, 30))
    label = np.zeros(hu.shape, np.uint8)
    label[5:10, 4:8, 2:8] = 1
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    thick = bench_qc.VARIANTS["slices_6mm"](hu, label, affine, rng)
    assert thick[0].shape == (20, 16, 15) and thick[2][2, 2] == 6.0 and np.array_equal(thick[1], label[:, :, ::2])
    thin = bench_qc.VARIANTS["slices_1.5mm"](hu, label, affine, rng)
    assert thin[0].shape == thin[1].shape == (20, 16, 59) and thin[2][2, 2] == 1.5
    cut = bench_qc.VARIANTS["fov_cut_25pct"](hu, label, affine, rng)
    assert cut[0].shape == cut[1].shape == (10, 16, 30) and cut[2][0, 3] == 15.0  # 5 columns of 3 mm cut
    crop = bench_qc.VARIANTS["region_upper_7_slices"](hu, label, affine, rng)
    assert crop[0].shape == (20, 16, 7) and crop[2][2, 3] == 69.0
    phase = bench_qc.VARIANTS["phase_plus90hu"](hu, label, affine, rng)[0]
    assert 72 <= phase[label == 1].min() and phase[label == 1].max() <= 108 and not phase[label == 0].any()


def test_qc_plumbing_on_real_ct():
    """bench_qc on a barely trained model: every variant, the dcmqi series and the extremity CT segmented and scored,
    our ranking and the baseline's computed on the same rows (no figure is held to its target)."""
    from bench import bench_qc

    if not (bench_qc.DATA / "totalsegmentator-example").is_dir():
        pytest.skip(f"real CT data not found at {bench_qc.DATA} (../shared/data)")
    result = bench_qc.check(steps=4)
    assert result["n_cases"] == 6
    cases = {r["case"] for r in result["rows"]}
    assert {"clean", "noise_250hu", "region_upper_7_slices", "slices_6mm"} <= cases <= \
        {"clean", "noise_250hu", "region_upper_7_slices", "slices_6mm", "dicom", "other_region"}
    # The extremity CT holds none of the classes: whatever was segmented there scores 0.
    assert all(r["true_dice"] == 0.0 for r in result["rows"] if r["case"] == "other_region")
    assert [r["review_rank"] for r in result["rows"]] == sorted(r["review_rank"] for r in result["rows"])
    assert all(0.0 <= r["true_dice"] <= 1.0 for r in result["rows"])
    # The upper slices hold no kidney: scored only where something was segmented there.
    kidneys = [r for r in result["rows"] if r["case"] == "region_upper_7_slices" and r["class"].startswith("kidney")]
    assert all(r["true_dice"] == 0.0 for r in kidneys)
    for side in ("ours", "baseline_max_softmax"):
        assert result[side]["n_bad"] == sum(r["true_dice"] < bench_qc.BAD_DICE for r in result["rows"])
    assert result["calibration"] is None or result["calibration"]["fitted_on"].startswith("training cases")


def test_qc_variants_split_by_the_kinds_the_calibration_saw():
    """Figures are reported apart for variants of kinds training's calibration degrades its cases
    with (noise, blur, HU shifts) and for the others, the other scanner's series among them."""
    from bench import bench_qc

    seen = {n for n in bench_qc.VARIANTS if bench_qc.variant_group(n) == "seen"}
    assert {"clean", "noise_250hu", "blur_3px", "scanner_x1.08_plus40hu", "noise_60hu_blur_1px"} <= seen
    assert not seen & {"phase_plus90hu", "streaks_300hu", "fov_cut_15pct", "slices_6mm", "region_upper_7_slices",
                       "phase_plus90hu_noise_60hu", "scanner_plus40hu_streaks_300hu"}
    assert bench_qc.variant_group("dicom") == "unseen"
