import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from replication.config.base import ConfigError, format_validation_error
from replication.config.report import TableMetric, load_report_spec
from replication.config.run import (
    config_mismatch,
    load_experiment,
    load_run_config,
    resolve_run_config,
    validate_run_config,
    write_run_config,
)
from replication.training.configure import main as configure_main

from .conftest import REPO, TINY, tiny_config


def test_mistyped_key_fails_naming_the_key():
    data = {**TINY, "train": {**TINY["train"], "stpes": 3}}
    with pytest.raises(ConfigError, match=r"unknown key 'train.stpes' \(did you mean 'steps'\?\)"):
        validate_run_config(data)


@pytest.mark.parametrize(
    "section,key,expected",
    [
        ("model", "n_layr", "unknown key 'model.n_layr'"),
        ("task", "seq_lne", "unknown key 'task.seq_lne'"),
        (
            "gapt",
            "patience_memorise",
            "unknown key 'gapt.patience_memorise' (did you mean 'patience_memorize'?)",
        ),
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
    with pytest.raises(
        ConfigError, match="gapt.rules: 'v2' is not one of paper, v1_code, v1_code_newer, relative"
    ):
        validate_run_config({**TINY, "gapt": {"rules": "v2"}})


def test_resolved_config_round_trips_through_the_run_folder(tmp_path):
    config = tiny_config("gapt_joint", objective={"lambda_mbe": 3.0})
    write_run_config(config, tmp_path / "config.yaml")
    again = load_run_config(tmp_path / "config.yaml")
    assert again == config
    assert again.digest() == config.digest()
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (
        written["gapt"]["patience_compress"] == 4 and written["objective"]["patch_size"] == 8
    )  # defaults filled


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
    assert (
        resolve_run_config(path, "small", "gapt_joint", 0).objective.lambda_mbe == 9.0
    )  # scale x method wins


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
    assert (
        configure_main([str(path), "--scale", "huge", "--method", "gapt", "--seed", "0", "--out", str(out)])
        == 2
    )
    assert "no scale 'huge'" in capsys.readouterr().err


# -- values that make no sense are errors naming the key, at load time ------------------------------


def _invalid(method: str = "ce", **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        tiny_config(method, **overrides)
    return str(info.value)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"train": {"steps": -5}}, "train.steps: Input should be greater than 0"),  # trained and exited 0
        ({"train": {"steps": 0}}, "train.steps: Input should be greater than 0"),  # ZeroDivisionError
        ({"train": {"grad_accum": 0}}, "train.grad_accum"),
        ({"train": {"eval_every": -1}}, "train.eval_every"),
        ({"train": {"max_nonfinite_in_row": 0}}, "train.max_nonfinite_in_row"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),  # crashed in numpy
        ({"seed": 2**32}, "seed: Input should be less than 4294967296"),
        ({"data_seed": 2**32}, "data_seed: Input should be less than 4294967296"),
        ({"objective": {"patch_size": 0}}, "objective.patch_size: Input should be greater than 0"),
        ({"objective": {"alpha": 0.0}}, "objective.alpha"),
        ({"objective": {"eps": 0.0}}, "objective.eps"),
        ({"objective": {"lambda_mbe": -1.0}}, "objective.lambda_mbe"),
        ({"objective": {"alternate_layers": []}}, "objective.alternate_layers"),
        ({"objective": {"joint_layers": [-1]}}, "objective.joint_layers.0"),
        ({"optim": {"muon_lr": -0.1}}, "optim.muon_lr: Input should be greater than or equal to 0"),
        ({"optim": {"head_lr": float("inf")}}, "optim.head_lr: Input should be a finite number"),
        ({"optim": {"adam_betas": [0.9, 1.0]}}, "optim.adam_betas.1"),
        ({"optim": {"adam_eps": 0.0}}, "optim.adam_eps"),
        ({"optim": {"muon_momentum_end": 1.5}}, "optim.muon_momentum_end"),
        ({"optim": {"schedule": {"stable_fraction": 1.5}}}, "optim.schedule.stable_fraction"),
        ({"optim": {"name": "adamw", "weight_decay": -0.1}}, "optim.weight_decay"),
        ({"alignment": {"every": -1}}, "alignment.every"),
        ({"model": {"n_layer": 0}}, "model.n_layer"),
        ({"model": {"rope_base": float("nan")}}, "model.rope_base: Input should be a finite number"),
        ({"model": {"head_dim": 15}}, "model: head_dim must be even"),
        ({"model": {"window_start": 64, "window_end": 32}}, "model: window_end (32) must be >= window_start"),
        ({"task": {"seq_len": 0}}, "task.seq_len"),
        ({"task": {"vocab_size": 1}}, "task.vocab_size"),
        ({"gapt": {"delta_ce": -0.01}}, "gapt.delta_ce: Input should be greater than or equal to 0"),
        ({"gapt": {"delta_mbe": float("nan")}}, "gapt.delta_mbe: Input should be a finite number"),
        ({"gapt": {"spike_tol": float("inf")}}, "gapt.spike_tol: Input should be a finite number"),
    ],
)
def test_nonsense_values_are_config_errors_naming_the_key(overrides, expected):
    assert expected in _invalid(**overrides)


def test_the_patch_size_must_divide_the_sequence_it_cuts():
    message = _invalid(objective={"patch_size": 5})  # seq_len 32
    assert "objective.patch_size (5) must divide task.seq_len (32)" in message
    assert tiny_config(objective={"patch_size": 16}).objective.patch_size == 16
    forgetting = {
        **TINY,
        "model": {"name": "mlp"},
        "task": {
            "name": "forgetting",
            "micro_batch_size": 16,
            "stages": [{"name": "mix", "steps": 30, "groups": ["a", "b"]}],
        },
        "optim": {"name": "adam"},
        "objective": {"alternate_layers": [0], "joint_layers": [0]},
    }
    assert validate_run_config(forgetting).task.mbe_sequence_length() == 16
    expected = r"objective.patch_size \(6\) must divide task.micro_batch_size \(16\)"
    with pytest.raises(ConfigError, match=expected):
        validate_run_config({**forgetting, "objective": {**forgetting["objective"], "patch_size": 6}})


def test_layer_indices_must_name_blocks_of_the_model():
    assert "objective.alternate_layers [2, 6] names blocks [6]; the model has 6" in _invalid(
        objective={"alternate_layers": [2, 6]}
    )
    assert "alignment.layers [9] names blocks [9]" in _invalid(alignment={"layers": [9]})
    # gapt's default middle layers need 5 blocks
    assert "set objective.alternate_layers explicitly" in _invalid("gapt", model={"n_layer": 4})
    assert tiny_config("gapt", model={"n_layer": 4}, objective={"alternate_layers": [1]}).model.n_layer == 4
    assert tiny_config("ce", model={"n_layer": 2}).model.n_layer == 2  # ce regularizes nothing


def test_gpt2_heads_must_split_the_width():
    gpt2 = {"name": "gpt2", "vocab_size": 32, "n_layer": 6, "d_model": 30, "n_head": 4}
    with pytest.raises(ConfigError, match=r"model: d_model \(30\) must be divisible by n_head \(4\)"):
        validate_run_config({**TINY, "model": gpt2, "optim": {"name": "adamw"}})


def test_nan_and_negative_learning_rates_in_yaml_are_config_errors(tmp_path):
    path = tmp_path / "config.yaml"
    write_run_config(tiny_config(), path)
    text = path.read_text()
    path.write_text(text.replace("muon_lr: 0.05", "muon_lr: .nan"))
    with pytest.raises(ConfigError, match="optim.muon_lr: Input should be a finite number"):
        load_run_config(path)
    path.write_text(text.replace("head_lr: 0.008", "head_lr: -0.008"))
    with pytest.raises(ConfigError, match="optim.head_lr: Input should be greater than or equal to 0"):
        load_run_config(path)
    adam = yaml.safe_dump(tiny_config(optim={"name": "adamw"}).to_dict()).replace("lr: 0.0006", "lr: .nan")
    path.write_text(adam)
    with pytest.raises(ConfigError, match="optim.lr: Input should be a finite number"):
        load_run_config(path)


def test_task_configs_reject_nonsense():
    from replication.config.arithmetic import Config as Arithmetic
    from replication.config.fineweb import Config as Fineweb
    from replication.config.forgetting import Config as Forgetting

    with pytest.raises(ValueError, match="early_stop_tolerance"):
        Arithmetic(early_stop_tolerance=float("nan"))
    with pytest.raises(ValueError, match="decode_batch"):
        Arithmetic(decode_batch=0)
    with pytest.raises(ValueError, match="val_tokens"):
        Fineweb(dataset="d", seq_len=64, val_tokens=100)
    with pytest.raises(ValueError, match="input_std"):
        Forgetting(input_std=0.0)
    with pytest.raises(ValueError, match="shift_scale"):
        Forgetting(shift_scale=(0.5, float("inf")))
    with pytest.raises(ValueError, match=r"train_per_group \(7\) is below the 8 examples per group"):
        Forgetting(train_per_group=7)
    with pytest.raises(ValueError, match="steps"):
        Forgetting(stages=[{"name": "mix", "steps": 0, "groups": ["a", "b"]}])


def test_every_shipped_run_still_resolves():
    for path in sorted((REPO / "experiments").glob("*/config.yaml")):
        spec = load_report_spec(path)  # the reporting sections too
        for scale, scale_spec in spec.scales.items():
            for method in scale_spec.methods if scale_spec.study_of else spec.methods:  # a study arm: its own
                resolve_run_config(spec, scale, method, scale_spec.seeds[-1])


# -- did-you-mean hints come from the section's own keys --------------------------------------------


def test_hints_come_only_from_the_sections_own_keys():
    message = _invalid(optim={"lr": 0.1})  # muon_adam has no lr: no hint may offer one
    assert "unknown key 'optim.lr'" in message and "did you mean 'lr'" not in message
    # val_batches is a synthetic key, not an arithmetic one
    arithmetic = {**TINY, "task": {"name": "arithmetic", "seq_len": 64, "val_batches": 2}}
    with pytest.raises(ConfigError) as info:
        validate_run_config(arithmetic)
    assert "unknown key 'task.val_batches'" in str(info.value) and "'val_batches'?" not in str(info.value)


def test_a_top_level_key_is_never_its_own_hint():
    message = _invalid(description="a run")
    assert "unknown key 'description'" in message and "did you mean" not in message


def test_an_unknown_key_without_a_close_one_lists_the_sections_keys():
    message = _invalid(gapt={"outdir": 1})
    assert "unknown key 'gapt.outdir'; valid keys: delta_ce, delta_mbe, patience_compress," in message


def test_a_value_outside_a_fixed_set_names_the_set_and_the_closest():
    message = _invalid(method="gapt2")
    assert (
        "method: 'gapt2' is not one of ce, ce_mbe, gapt, gapt_joint, gapt_smoothed, gapt_matched, " in message
    )
    assert "(did you mean 'gapt'?)" in message


@pytest.mark.parametrize(
    "task,expected",
    [
        ({**TINY["task"], "seq_lne": 3}, "unknown key 'task.seq_lne' (did you mean 'seq_len'?)"),
        (
            {"name": "forgetting", "stages": [{"name": "mix", "stepz": 3, "groups": ["a"]}]},
            "unknown key 'task.stages.0.stepz' (did you mean 'steps'?)",
        ),
    ],
)
def test_nested_task_keys_get_hints_from_their_task(task, expected):
    with pytest.raises(ConfigError) as info:
        validate_run_config({**TINY, "task": task})
    assert expected in str(info.value)


def test_union_sections_hint_from_the_chosen_class():
    assert "unknown key 'model.n_layr' (did you mean 'n_layer'?)" in _invalid(model={"n_layr": 3})
    assert "unknown key 'optim.schedule.warmup' (did you mean 'warmup_steps'?)" in _invalid(
        optim={"schedule": {"warmup": 3}}
    )


def test_experiment_keys_get_hints_from_the_experiment_schema(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXPERIMENT.replace("    seeds: [0, 1]", "    seeds: [0, 1]\n    confg: {}"))
    with pytest.raises(ConfigError, match=r"unknown key 'scales.small.confg' \(did you mean 'config'\?\)"):
        load_experiment(path)
    path.write_text(EXPERIMENT.replace("seeds: [0, 1]", "seeds: [0, -1]"))
    with pytest.raises(ConfigError, match="scales.small.seeds.1: Input should be greater than or equal to 0"):
        load_experiment(path)


class _HintProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    val_tokens: int = 1
    nested: dict[str, list[TableMetric]] = {}


def test_hints_without_a_root_class_follow_the_error_title():
    # prepare.py formats its data-set options' errors without naming the class
    data = {"val_tokenz": 3, "nested": {"a": [{"key": "k", "label": "l", "paper_": {}}]}}
    with pytest.raises(ValidationError) as info:
        _HintProbeOptions.model_validate(data)
    message = format_validation_error(info.value, "probe")
    assert "unknown key 'val_tokenz' (did you mean 'val_tokens'?)" in message
    assert "unknown key 'nested.a.0.paper_' (did you mean 'paper'?)" in message
    assert format_validation_error(info.value, "probe", _HintProbeOptions) == message


# -- an experiment config where a run config belongs -------------------------------------------------


def test_an_experiment_config_given_as_a_run_config_is_one_clear_error():
    path = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert "\n" not in message and "unknown key" not in message
    assert message.startswith(f"{path} is an experiment config, not a run config")
    assert "python -m replication.training.configure" in message


def test_a_task_validators_message_keeps_the_task_location():
    task = {"name": "arithmetic", "seq_len": 64, "ood_digits": [2, 3]}
    with pytest.raises(ConfigError, match=r"\n  task: ood_digits \[2, 3\] must start above train_digits"):
        validate_run_config({**TINY, "task": task})


# -- sections that do not fit together fail at validation (TaskConfig.check_fit) --------------------

FORGETTING_RUN = {
    **TINY,
    "model": {"name": "mlp"},
    "optim": {"name": "adam"},
    "objective": {"alternate_layers": [0], "joint_layers": [0]},
    "task": {
        "name": "forgetting",
        "micro_batch_size": 16,
        "stages": [
            {"name": "mix", "steps": 20, "groups": ["a", "b"]},
            {"name": "finetune", "steps": 10, "groups": ["a"]},
        ],
    },
}


@pytest.mark.parametrize(
    "change,expected",
    [
        (
            {"model": {"name": "gpt2", "vocab_size": 32, "n_layer": 2, "d_model": 16, "n_head": 2}},
            "the forgetting task trains model.name: mlp, got gpt2",
        ),
        ({"train": {**TINY["train"], "steps": 40}}, r"task.stages add up to 30 steps but train.steps is 40"),
        (
            {"train": {**TINY["train"], "eval_every": 15}},
            r"stage 'mix' ends at step 20, which is not an evaluation step",
        ),
        (
            {"task": {**FORGETTING_RUN["task"], "val_per_group": 4}},
            r"task.val_per_group \(4\) is below the patch size \(8\)",
        ),
    ],
)
def test_a_forgetting_run_whose_sections_do_not_fit_fails_naming_why(change, expected):
    assert validate_run_config(FORGETTING_RUN).task.name == "forgetting"
    with pytest.raises(ConfigError, match=expected):
        validate_run_config({**FORGETTING_RUN, **change})


def test_a_model_vocabulary_too_small_for_the_task_fails_at_validation():
    with pytest.raises(ConfigError, match=r"task.vocab_size 64 exceeds model.vocab_size 32"):
        validate_run_config({**TINY, "task": {**TINY["task"], "vocab_size": 64}})
    arithmetic = {"name": "arithmetic", "seq_len": 32, "train_digits": [1, 2], "ood_digits": [3, 3]}
    with pytest.raises(ConfigError, match="the arithmetic task needs a vocabulary of at least"):
        validate_run_config({**TINY, "task": arithmetic, "model": {**TINY["model"], "vocab_size": 8}})


def test_a_run_folder_from_before_rq1_moved_to_reporting_still_loads_and_matches(tmp_path, capsys):
    config = resolve_run_config(REPO / "experiments/fineweb_pretrain/config.yaml", "cpu", "ce", 0)
    old = config.to_dict()
    old["task"]["rq1_time_constant"] = 29.0  # what run folders of the earlier version hold
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_run_config(path) == config
    assert (
        "task.rq1_time_constant is no longer read: it moved to the experiment file's reporting"
        in capsys.readouterr().err
    )
    assert config_mismatch({"config": old, "config_digest": "written-before"}, config) is None
    with pytest.raises(ConfigError, match="unknown key 'task.rq1_time_constant'"):  # never in a new config
        validate_run_config(old)
