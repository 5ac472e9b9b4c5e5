import pytest
import yaml

from replication.config import (
    ConfigError,
    load_experiment,
    load_run_config,
    resolve_run_config,
    validate_run_config,
    write_run_config,
)
from replication.configure import main as configure_main

from .conftest import TINY, tiny_config


def test_mistyped_key_fails_naming_the_key():
    data = {**TINY, "train": {**TINY["train"], "stpes": 3}}
    with pytest.raises(ConfigError, match=r"unknown key 'train.stpes' \(did you mean 'steps'\?\)"):
        validate_run_config(data)


@pytest.mark.parametrize(
    "section,key,expected",
    [
        ("model", "n_layr", "unknown key 'model.n_layr'"),
        ("task", "seq_lne", "unknown key 'task.seq_lne'"),
        ("gapt", "patience_memorise", "unknown key 'gapt.patience_memorise' (did you mean 'patience_memorize'?)"),
        ("optim", "muon_lrr", "unknown key 'optim.muon_lrr'"),
    ],
)
def test_unknown_keys_in_nested_sections_are_named(section, key, expected):
    data = {**TINY, section: {**TINY.get(section, {}), key: 1}}
    with pytest.raises(ConfigError) as info:
        validate_run_config(data)
    assert expected in str(info.value)


def test_wrong_types_and_unknown_names_are_errors():
    with pytest.raises(ConfigError, match="train.steps"):
        validate_run_config({**TINY, "train": {**TINY["train"], "steps": "many"}})
    with pytest.raises(ConfigError, match="unknown task 'sythetic'"):
        validate_run_config({**TINY, "task": {"name": "sythetic"}})
    with pytest.raises(ConfigError, match="method"):
        validate_run_config({**TINY, "method": "gapt2"})
    with pytest.raises(ConfigError, match="unknown GAPT rule set"):
        validate_run_config({**TINY, "gapt": {"rules": "v2"}})


def test_resolved_config_round_trips_through_the_run_folder(tmp_path):
    config = tiny_config("gapt_joint", objective={"lambda_mbe": 3.0})
    write_run_config(config, tmp_path / "config.yaml")
    again = load_run_config(tmp_path / "config.yaml")
    assert again == config
    assert again.digest() == config.digest()
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["gapt"]["patience_compress"] == 4 and written["objective"]["patch_size"] == 8  # defaults filled


EXPERIMENT = """
experiment: demo
defaults:
  task: {name: synthetic, seq_len: 32}
  model: {name: modded, vocab_size: 32, n_layer: 6, d_model: 32, n_head: 2, head_dim: 16}
  optim: {name: muon_adam}
  train: {steps: 100, grad_accum: 2}
  objective: {lambda_mbe: 1.0}
methods:
  ce: {}
  gapt: {gapt: {patience_memorize: 7}}
  gapt_joint: {objective: {lambda_mbe: 5.0}}
scales:
  small:
    seeds: [0, 1]
    config: {train: {steps: 10}, objective: {lambda_mbe: 2.0}, gapt: {patience_memorize: 3}}
    methods:
      gapt_joint: {objective: {lambda_mbe: 9.0}}
"""


def test_precedence_defaults_scale_method_scale_method(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXPERIMENT)
    ce = resolve_run_config(path, "small", "ce", 1)
    assert (ce.train.steps, ce.objective.lambda_mbe, ce.seed, ce.scale) == (10, 2.0, 1, "small")
    assert ce.task.seq_len == 32  # from defaults, untouched by the scale
    assert resolve_run_config(path, "small", "gapt", 0).gapt.patience_memorize == 7  # method beats scale
    assert resolve_run_config(path, "small", "gapt_joint", 0).objective.lambda_mbe == 9.0  # scale x method wins


def test_experiment_errors_name_what_is_missing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXPERIMENT)
    with pytest.raises(ConfigError, match="no scale 'paper'"):
        resolve_run_config(path, "paper", "ce", 0)
    with pytest.raises(ConfigError, match="no method 'ce_mbe'"):
        resolve_run_config(path, "small", "ce_mbe", 0)
    path.write_text(EXPERIMENT.replace("  ce: {}", "  ce: {}\n  cee: {}"))
    with pytest.raises(ConfigError, match="unknown methods"):
        load_experiment(path)
    path.write_text(EXPERIMENT.replace("train: {steps: 10}", "train: {stepz: 10}"))
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        resolve_run_config(path, "small", "ce", 0)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "nope.yaml")


def test_configure_command_writes_the_resolved_config(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(EXPERIMENT)
    out = tmp_path / "runs" / "demo" / "small" / "gapt" / "seed0" / "config.yaml"
    argv = [str(path), "--scale", "small", "--method", "gapt", "--seed", "0", "--out", str(out)]
    assert configure_main(argv) == 0
    assert load_run_config(out) == resolve_run_config(path, "small", "gapt", 0)
    assert configure_main([str(path), "--scale", "huge", "--method", "gapt", "--seed", "0", "--out", str(out)]) == 2
    assert "no scale 'huge'" in capsys.readouterr().err
