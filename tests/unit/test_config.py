"""The one config schema, its defaults, the per-stage options and the model's label map and postprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unet_pipeline.config import (CONFIG_SCHEMA, effective_postprocess, fingerprint_options, import_options,
                                  inference_options, load_config, model_label_names, plan_options, slice_options,
                                  speed_options, train_options)
from unet_pipeline.errors import ConfigError
from unet_pipeline.schema import check_config, section_defaults

REPO = Path(__file__).resolve().parents[2]


def test_one_schema_shipped_in_the_package_and_used_by_the_workflow():
    assert CONFIG_SCHEMA == REPO / "unet_pipeline" / "schemas" / "config.schema.yaml"
    assert not list((REPO / "workflow").rglob("*.schema.yaml"))
    common = (REPO / "workflow" / "rules" / "common.smk").read_text(encoding="utf-8")
    assert "check_config(config)" in common and "validate(" not in common


SECTIONS = ("cohort", "split", "plan", "model", "loss", "augment", "training", "inference", "evaluation", "output",
            "predict")


def test_defaults_are_the_schemas():
    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    config = load_config()
    for section in SECTIONS:
        for key, spec in schema["properties"][section]["properties"].items():
            if "default" in spec and spec.get("type") != "object":
                assert config[section][key] == spec["default"], f"{section}.{key}"
    assert config["cohort"]["geometry_tolerance_mm"] == 0.01 and config["postprocess"] is None


def test_the_option_classes_take_their_defaults_from_the_schema_and_read_every_key_it_has():
    """One place for the defaults: TrainConfig, AugmentConfig and UNetConfig equal the schema's, and
    each reads exactly the keys of its section (none the schema refuses, none it ignores)."""
    import dataclasses

    from unet_pipeline.model.unet import UNetConfig
    from unet_pipeline.train.augment import AugmentConfig
    from unet_pipeline.train.loop import TrainConfig

    internal = {"training": {"loss", "stop_after_iterations"}, "model": {"num_classes"}, "augment": set()}
    for section, cls in (("training", TrainConfig), ("augment", AugmentConfig), ("model", UNetConfig)):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        defaults = section_defaults(section)
        assert set(fields) - internal[section] == set(defaults), section
        for key, value in defaults.items():
            got = fields[key]
            got = [list(x) if isinstance(x, tuple) else x for x in got] if isinstance(got, tuple) else got
            assert got == value, f"{section}.{key}: {got!r} != schema {value!r}"


def test_stage_keyword_defaults_are_the_schemas():
    """The planning stages' keyword defaults (used by code that calls them without a config) equal the schema's."""
    import inspect

    from unet_pipeline import stages
    from unet_pipeline.io.geometry import check_slice_axis
    from unet_pipeline.plan.fingerprint import fingerprint_cases
    from unet_pipeline.plan.planner import PlanOptions, make_plan

    plan = section_defaults("plan")
    checked = set()
    for fn in (stages.fingerprint, stages.plan, fingerprint_cases, PlanOptions, make_plan):
        params = inspect.signature(fn).parameters
        for key, value in plan.items():
            if key in params and params[key].default is not inspect.Parameter.empty:
                given = params[key].default
                if key == "slice_axis" and given is None:  # None is read as the default plane
                    given = check_slice_axis(None)
                assert given == value, f"{fn.__name__}({key}=...)"
                checked.add(key)
    assert checked == set(plan)  # every key of the plan section has a default in one of them


def test_the_real_cohort_recipe_is_the_default():
    """What measured best on real CT (README, "Real CT") is what every door uses without a config."""
    config = load_config()
    training = config["training"]
    assert (training["optimizer"], training["lr"], training["foreground_fraction"]) == ("adamw", 0.003, 0.67)
    assert training["epochs"] * training["iterations_per_epoch"] >= 20000  # a budget, not the demo's 480 steps
    assert config["loss"]["batch_dice"] is True and config["plan"]["intensity"] == "body"
    assert config["plan"]["max_patch_mm"] == 192 and config["augment"]["lr_label_pairs"] == []


def test_the_template_config_sets_no_default_of_its_own_and_the_demo_only_what_it_needs():
    template = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    defaults = load_config()
    for section, values in template.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert value == defaults[section][key], f"config.yaml {section}.{key} differs from the schema"
        else:
            assert values == defaults[section]
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    assert demo["cohort"] == {"demo": {"enabled": True, "n_cases": 16, "seed": 0}}
    assert set(demo) <= {"cohort", "plan", "augment", "training"}
    assert set(demo["training"]) <= {"epochs", "iterations_per_epoch"}


def test_a_file_is_validated_and_filled_in_and_a_mapping_is_not_changed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cohort: {images: /x}\ntraining: {epochs: 3}\n", encoding="utf-8")
    config = load_config(path)
    assert config["training"]["epochs"] == 3 and config["training"]["batch_size"] == 8
    given = {"cohort": {"images": "/x"}}
    assert load_config(given)["split"]["seed"] == 0 and given == {"cohort": {"images": "/x"}}


@pytest.mark.parametrize("text,message", [
    ("training: {epocs: 3}\n", "c.yaml: training.epocs: unknown key; did you mean epochs?"),
    ("augment: {mirorr_p: 0.5}\n", "c.yaml: augment.mirorr_p: unknown key; did you mean mirror_p?"),
    ("postprocess: {liver: {largest: true}}\n", "c.yaml: postprocess.liver.largest: unknown key; did you mean "
                                                 "largest_component?"),
    ("inference: {chunk_slice: 8}\n", "c.yaml: inference.chunk_slice: unknown key; did you mean chunk_slices?"),
    ("loss: {smoth: 0.1}\n", "c.yaml: loss.smoth: unknown key; did you mean smooth?"),
    ("plan: {bogus: 1}\n", "c.yaml: plan.bogus: unknown key; valid keys: target_spacing_mm"),
    ("trainig: {epochs: 3}\n", "c.yaml: trainig: unknown key; did you mean training?"),
    ("training: {epochs: 0}\n", "c.yaml: training.epochs: 0 is less than the minimum of 1"),
    ("- a list\n", "not a workflow config"),
])
def test_a_bad_config_names_the_key_and_the_nearest_valid_one(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_refuses_unknown_keys(section):
    with pytest.raises(ConfigError, match=rf"^{section}\.no_such_key: unknown key"):
        check_config({section: {"no_such_key": 1}})


def test_command_line_strings_become_the_numbers_and_flags_the_schema_asks_for():
    """``snakemake --config 'training={epochs: 100}'`` passes the string '100'."""
    config = check_config({"training": {"epochs": "100", "deterministic": "true"}, "plan": {"max_patch_mm": "null"},
                           "postprocess": {"liver": {"min_volume_ml": "0.5"}}})
    assert config["training"]["epochs"] == 100 and config["training"]["deterministic"] is True
    assert config["plan"]["max_patch_mm"] is None and config["postprocess"]["liver"]["min_volume_ml"] == 0.5
    with pytest.raises(ConfigError, match="training.epochs: 'many' is not of type 'integer'"):
        check_config({"training": {"epochs": "many"}})


#: Keyword arguments a rule script passes that come from the rule itself (paths, the case), not the config.

def test_stage_options_are_what_the_rules_pass():
    config = load_config({"cohort": {"geometry_tolerance_mm": 0.2}, "model": {"in_channels": 3},
                          "plan": {"target_spacing_mm": [2.0, 2.0], "max_patch": 64}, "split": {"seed": 7},
                          "loss": {"name": "weighted_ce", "w0": 4.0, "sigma_px": 2.5},
                          "training": {"device": "cpu", "threads": 1},
                          "postprocess": {"*": {"fill_holes": True}}})
    options = import_options(config)
    assert options["min_slices"] == 3 and options["geometry_tolerance_mm"] == 0.2
    fingerprint, plan = fingerprint_options(config), plan_options(config)
    assert plan["target_spacing_mm"] == [2.0, 2.0] and plan["patch_size"] is None and plan["max_patch"] == 64
    assert fingerprint == {"slice_axis": "axial", "seed": 7}  # all the fingerprint (the image reads) depends on
    assert fingerprint["slice_axis"] == config["plan"]["slice_axis"] == options["slice_axis"] == "axial"
    assert set(fingerprint) | set(plan) == {*config["plan"], "seed"}  # every plan key reaches a planning stage
    assert not set(fingerprint) & set(plan)
    assert slice_options(config) == {"weight_map": True, "w0": 4.0, "sigma_px": 2.5}
    train = train_options(config)
    assert train["loss"]["name"] == "weighted_ce" and train["postprocess"] == {"*": {"fill_holes": True}}
    assert set(train) == {"model", "training", "augment", "loss", "postprocess"}
    shaping = train_options(config, speed=False)
    assert set(shaping) == {"model", "training", "augment", "loss"}
    assert {"device", "threads", "prefetch", "checkpoint_minutes", "compile", "progress"}.isdisjoint(shaping["training"])
    assert {**shaping["training"], **speed_options(config, "training")} == train["training"]
    assert "batch_size" not in inference_options(config, speed=False) and "overlap" in inference_options(config, speed=False)


def test_the_rules_pass_the_option_builders_and_nothing_else_from_the_config():
    """Read from the rules: every stage's arguments come from the builders above (the CLI's too),
    and no rule takes a whole config section as a param (that would rerun it for any key)."""
    import re

    rules = {p.stem: p.read_text(encoding="utf-8") for p in (REPO / "workflow" / "rules").glob("*.smk")}
    common = rules["common"]
    for builder in ("import_options(config", "fingerprint_options(config)", "plan_options(config)", "slice_options(config)",
                    "train_options(config, speed=False)", "inference_options(config, speed=False)"):
        assert builder in common, builder
    assert "options=IMPORT_OPTIONS" in rules["cohort"]
    assert "options=FINGERPRINT_OPTIONS" in rules["preprocess"] and "options=SLICE_OPTIONS" in rules["preprocess"]
    assert "options=PLAN_OPTIONS" in rules["preprocess"]
    assert "options=TRAIN_OPTIONS" in rules["train"] and "inference=INFERENCE_OPTIONS" in rules["predict"]
    params = [block for text in rules.values() for block in re.findall(r"params:\n((?:        .*\n)+)", text)]
    assert len(params) >= 8
    for block in params:
        assert not re.search(r'config\["(training|inference|model|augment|loss|plan|evaluation)"\]\s*,?\n', block), block


@pytest.mark.parametrize("override,recorded,applied", [
    (None, {"*": {"min_volume_ml": 1.0}}, {"*": {"min_volume_ml": 1.0}}),  # the model's record
    ({}, {"*": {"min_volume_ml": 1.0}}, {}),                               # {} = none, explicitly
    ({"liver": {"fill_holes": True}}, {"*": {"min_volume_ml": 1.0}}, {"liver": {"fill_holes": True}}),
    (None, None, {}),                                                      # a model without a record
])
def test_postprocessing_is_the_models_unless_the_config_sets_it(override, recorded, applied):
    meta = {} if recorded is None else {"postprocess": recorded}
    assert effective_postprocess(override, meta) == applied


def _model(tmp_path, labels):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    card = {"format": "unet-pipeline-model/1", "labels": labels, "architecture": {}, "plan": {}}
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def test_label_names_come_from_the_model_and_another_map_is_refused(tmp_path):
    model = _model(tmp_path, {"1": "liver", "2": "spleen"})
    assert model_label_names(model) == {1: "liver", 2: "spleen"}
    assert model_label_names([str(model)], {"1": "liver", 2: "spleen"}) == {1: "liver", 2: "spleen"}
    with pytest.raises(ConfigError) as info:
        model_label_names(model, {1: "spleen", 2: "liver"}, source="the labels of ds.json")
    message = str(info.value)
    assert "the labels of ds.json {1: 'spleen', 2: 'liver'}" in message and "{1: 'liver', 2: 'spleen'}" in message
    with pytest.raises(ConfigError, match="model.json not found"):
        model_label_names(tmp_path / "nowhere")
