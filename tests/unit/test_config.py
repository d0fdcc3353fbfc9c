"""The one config schema, its defaults, the per-stage options and the model's label map and postprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unet_pipeline.config import CONFIG_SCHEMA, effective_postprocess, fingerprint_options, import_options, load_config, model_label_names, slice_options, train_options
from unet_pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_one_schema_shipped_in_the_package_and_used_by_the_workflow():
    assert CONFIG_SCHEMA == REPO / "unet_pipeline" / "schemas" / "config.schema.yaml"
    assert not list((REPO / "workflow").rglob("*.schema.yaml"))
    common = (REPO / "workflow" / "rules" / "common.smk").read_text(encoding="utf-8")
    assert "validate(config, str(CONFIG_SCHEMA))" in common


def test_defaults_are_the_schemas():
    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    config = load_config()
    for section in ("cohort", "split", "plan", "model", "loss", "training", "inference", "evaluation", "predict"):
        for key, spec in schema["properties"][section]["properties"].items():
            if "default" in spec and spec.get("type") != "object":
                assert config[section][key] == spec["default"], f"{section}.{key}"
    assert config["cohort"]["geometry_tolerance_mm"] == 0.01 and config["postprocess"] is None


def test_a_file_is_validated_and_filled_in_and_a_mapping_is_not_changed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cohort: {images: /x}\ntraining: {epochs: 3}\n", encoding="utf-8")
    config = load_config(path)
    assert config["training"]["epochs"] == 3 and config["training"]["batch_size"] == 8
    given = {"cohort": {"images": "/x"}}
    assert load_config(given)["split"]["seed"] == 0 and given == {"cohort": {"images": "/x"}}


@pytest.mark.parametrize("text,match", [("plan: {bogus: 1}\n", "bogus"), ("training: {epochs: 0}\n", "epochs|minimum"),
                                        ("- a list\n", "not a workflow config")])
def test_a_bad_config_names_the_key(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


#: Keyword arguments a rule script passes that come from the rule itself (paths, the case), not the config.
_FROM_THE_RULE = {"import_case": {"labels", "series_uid"}, "fingerprint": {"labels"}, "slice_case": set(),
                  "train": {"preprocessed_root", "slices_root", "plan_path", "out_dir"}}


def _rule_keywords(stage: str, config) -> set[str]:
    """The keywords ``workflow/scripts/<stage>.py`` passes to ``stages.<stage>``, a ``**`` of a rule
    parameter expanded to that config section's keys (read from the rule's ``params:``)."""
    import ast
    import re

    tree = ast.parse((REPO / "workflow" / "scripts" / f"{stage}.py").read_text(encoding="utf-8"))
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == stage and getattr(n.func.value, "id", "") == "stages"]
    names = {kw.arg for kw in call.keywords if kw.arg}
    rules = "".join(p.read_text(encoding="utf-8") for p in (REPO / "workflow" / "rules").glob("*.smk"))
    rule = re.search(rf"^rule {stage}:\n(.*?)(?=^rule |\Z)", rules, flags=re.M | re.S).group(1)
    for kw in call.keywords:
        if kw.arg is None:  # **plan, with plan = sm.params.plan and the rule's plan=config["plan"]
            param = ast.unparse(kw.value).rpartition(".")[2]
            section = re.search(rf'^\s+{param}=config\["(\w+)"\]', rule, flags=re.M).group(1)
            names |= set(config[section])
    return names - _FROM_THE_RULE[stage]


def test_stage_options_are_what_the_rules_pass():
    config = load_config({"cohort": {"geometry_tolerance_mm": 0.2}, "model": {"in_channels": 3},
                          "plan": {"target_spacing_mm": [2.0, 2.0], "max_patch": 64}, "split": {"seed": 7},
                          "loss": {"name": "weighted_ce", "w0": 4.0, "sigma_px": 2.5},
                          "postprocess": {"*": {"fill_holes": True}}})
    options = import_options(config)
    assert options["min_slices"] == 3 and options["geometry_tolerance_mm"] == 0.2
    plan = fingerprint_options(config)
    assert plan["target_spacing_mm"] == [2.0, 2.0] and plan["patch_size"] is None and plan["max_patch"] == 64
    assert plan["seed"] == 7
    assert plan["slice_axis"] == config["plan"]["slice_axis"] == options["slice_axis"] == "axial"
    assert set(plan) == {*config["plan"], "seed"}  # every plan key reaches the fingerprint stage
    assert slice_options(config) == {"weight_map": True, "w0": 4.0, "sigma_px": 2.5}
    train = train_options(config)
    assert train["loss"]["name"] == "weighted_ce" and train["postprocess"] == {"*": {"fill_holes": True}}
    assert set(train) == {"model", "training", "augment", "loss", "postprocess"}
    # The same keywords as the rule scripts pass (the CLI calls the stages with these options).
    for stage, found in (("import_case", options), ("fingerprint", plan), ("slice_case", slice_options(config)),
                         ("train", train)):
        assert set(found) == _rule_keywords(stage, config), stage


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
    (folder / "model.json").write_text(json.dumps({"labels": labels}), encoding="utf-8")
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
