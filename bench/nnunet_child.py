"""nnU-Net v2 side of ``bench/bench_realdata.py``: plan, preprocess, train for a wall-clock budget
and predict, in the nnU-Net venv (``bench/setup_nnunet.sh``), never in the project's environment.

Run by :func:`bench.realdata_nnunet.run` as ``python bench/nnunet_child.py ARGS.json`` with the
environment variables ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set to
folders in the benchmark's temporary directory. ``ARGS.json`` holds ``raw``, ``preprocessed``,
``results`` (those folders), ``dataset`` (``Dataset001_...`` under ``raw``, written by
:func:`bench.realdata_nnunet.write_inputs`), ``tests`` (name -> image in the training scan's
storage order), ``out`` (folder for the predictions), ``minutes`` (training budget),
``da_processes`` (data-augmentation worker processes) and ``result`` (where the timings go, as
JSON: ``plan_s``, ``setup_s``, ``train_s``, ``predict_s``, ``iterations``, ``epochs`` (begun),
``final_lr``, ``patch_size``, ``batch_size``, ``spacing_mm``, ``mirror_axes``, ``predictions``).

What is nnU-Net's own here: the fingerprint, the default ``ExperimentPlanner`` (plans
``nnUNetPlans``) and preprocessing of the ``2d`` configuration; its trainer (network from the
plans, deep supervision, Dice + CE, SGD with Nesterov momentum, lr 1e-2, its data loader with
foreground oversampling and its augmentation); fold ``all``; its predictor (tile step 0.5,
Gaussian weighting, test-time mirroring over the axes it trained with). What :class:`BudgetTrainer`
changes: training stops when the budget is spent, checked before every iteration, and the poly
learning-rate schedule runs over the budget's seconds instead of 1000 epochs (lr = 1e-2 *
(1 - elapsed / budget) ** 0.9, set before every iteration); the per-epoch validation pass (50
iterations on the training case itself under fold ``all``, used only for logging and the "best"
checkpoint) is skipped so that the whole budget trains. The prediction loads
``checkpoint_final.pth`` into a network built by ``nnUNetTrainer.build_network_architecture``
and initialises ``nnUNetPredictor`` by hand: nnU-Net's lookup of a trainer by name imports every
trainer module, ``primus`` included, which needs ``timm`` (removed from the venv with the
torchvision that does not load beside its torch).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(args_path: str) -> None:
    args = json.loads(Path(args_path).read_text(encoding="utf-8"))
    # nnunetv2.paths reads these when it is imported; the parent sets them too.
    os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"] = args["raw"], args["preprocessed"]
    os.environ["nnUNet_results"] = args["results"]
    os.environ["nnUNet_n_proc_DA"] = str(args["da_processes"])
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    class BudgetTrainer(nnUNetTrainer):
        """nnU-Net's trainer, stopped by wall-clock time with its poly schedule sized to that time."""

        budget_s = 60.0

        def configure_optimizers(self):
            optimizer, scheduler = super().configure_optimizers()
            scheduler.max_steps = self.budget_s  # steps are seconds of training: see run_training
            return optimizer, scheduler

        def run_training(self):
            self.on_train_start()  # data loaders (augmentation workers started), plans copied
            self.iterations = 0
            t0 = time.perf_counter()
            while True:
                self.on_epoch_start()
                self.network.train()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    elapsed = time.perf_counter() - t0
                    if elapsed >= self.budget_s:
                        break
                    self.lr_scheduler.step(elapsed)
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.iterations += 1
                if outputs:
                    self.on_train_epoch_end(outputs)
                    self.print_to_log_file(f"epoch {self.current_epoch}: {len(outputs)} iterations, "
                                           f"{time.perf_counter() - t0:.1f} s, lr {self.optimizer.param_groups[0]['lr']:.5f}")
                    self.current_epoch += 1
                if len(outputs) < self.num_iterations_per_epoch:
                    break
            self.train_s = time.perf_counter() - t0
            self.on_train_end()  # checkpoint_final.pth, data loaders shut down

    torch.set_num_threads(os.cpu_count() or 1)  # what nnUNetv2_train -device cpu does
    dataset_id = int(args["dataset"][len("Dataset"):len("Dataset") + 3])
    t0 = time.perf_counter()
    extract_fingerprints([dataset_id], check_dataset_integrity=True, verbose=False, show_progress_bar=False)
    plans_name = plan_experiments([dataset_id])
    preprocess([dataset_id], plans_name, configurations=("2d",), num_processes=(2,), show_progress_bar=False)
    plan_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    folder = Path(args["preprocessed"]) / maybe_convert_to_dataset_name(dataset_id)
    plans = load_json(str(folder / f"{plans_name}.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(folder / "dataset.json"))
    BudgetTrainer.budget_s = 60.0 * float(args["minutes"])
    trainer = BudgetTrainer(plans=plans, configuration="2d", fold="all", dataset_json=dataset_json,
                            device=torch.device("cpu"))
    trainer.run_training()
    setup_s = time.perf_counter() - t0 - trainer.train_s

    t0 = time.perf_counter()
    checkpoint = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    network = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                    [checkpoint["network_weights"]], dataset_json, checkpoint["trainer_name"],
                                    checkpoint["inference_allowed_mirroring_axes"])
    names = sorted(args["tests"])
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential([[args["tests"][n]] for n in names], [str(out / n) for n in names],
                                            save_probabilities=False, overwrite=True)
    predict_s = time.perf_counter() - t0
    config = trainer.configuration_manager
    result = {"plan_s": plan_s, "setup_s": setup_s, "train_s": trainer.train_s, "predict_s": predict_s,
              "iterations": trainer.iterations, "epochs": trainer.current_epoch,
              "final_lr": trainer.optimizer.param_groups[0]["lr"], "patch_size": list(config.patch_size),
              "batch_size": int(config.batch_size), "spacing_mm": [float(s) for s in config.spacing],
              "mirror_axes": list(checkpoint["inference_allowed_mirroring_axes"] or []),
              "predictions": {n: str(out / f"{n}{dataset_json['file_ending']}") for n in names}}
    Path(args["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: nnunet_child.py ARGS.json (see the module docstring)")
    main(sys.argv[1])
