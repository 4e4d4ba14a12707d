"""Recipe argument parsing: recipe config < method preset < --config file < command line; typos are errors."""

import json
from dataclasses import dataclass

import pytest

from hf_projkd import METHOD_PRESETS, DistillationArguments
from hf_projkd.cli import parse_recipe_args


@dataclass
class DataArgs:
    dataset: str = "uoft-cs/cifar100"
    max_train_samples: int | None = None


@dataclass
class MethodArgs:
    method: str = "srd+kd"


def test_recipe_config_then_defaults_then_config_file_then_cli(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 0.5\nmax_train_samples: 3\n")
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.2\ndataset: local/cifar\nfeature_norm: l2\n")
    (data, args), explicit = parse_recipe_args(
        (DataArgs, DistillationArguments), [recipe],
        defaults={"output_dir": str(tmp_path), "learning_rate": 0.05, "max_train_samples": 10},
        argv=["--config", str(config), "--feature_norm", "layernorm"],
    )
    assert data == DataArgs(dataset="local/cifar", max_train_samples=10)  # file beats defaults beat recipe config
    assert args.learning_rate == 0.2  # file beats recipe default
    assert args.feature_norm == "layernorm"  # CLI beats file
    assert args.output_dir == str(tmp_path)
    assert explicit == {"learning_rate", "dataset", "feature_norm"}  # what the user set, not the recipe


def test_method_preset_sits_between_the_recipe_and_the_user(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: srd+kd\ntemperature: 3.0\n")  # a recipe may not override a preset's loss field
    (method, args), explicit = parse_recipe_args(
        (MethodArgs, DistillationArguments), [recipe], {"output_dir": str(tmp_path)},
        ["--method=kd", "--ce_weight", "0.5"],
    )
    assert method.method == "kd" and args.method == "custom"  # ce_weight 0.5 is not the kd preset any more
    assert args.temperature == METHOD_PRESETS["kd"]["temperature"] == 4.0 and args.ce_weight == 0.5
    assert explicit == {"method", "ce_weight"}
    (_, plain), _ = parse_recipe_args((MethodArgs, DistillationArguments), [], {"output_dir": str(tmp_path)},
                                      ["--method", "srd"])
    assert plain.method == "srd" and plain.logit_loss == "none"


def test_json_config_and_validation_of_values(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"logsum_exponent": 0}))
    with pytest.raises(ValueError, match="logsum_exponent must be > 0"):
        parse_recipe_args((DataArgs, DistillationArguments), [], {"output_dir": str(tmp_path)},
                          ["--config", str(config)])


def test_unknown_fields_missing_and_broken_files_are_errors(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown fields \['learning_rat'\]"):
        parse_recipe_args((DataArgs, DistillationArguments), [], {"output_dir": str(tmp_path)},
                          ["--config", str(config)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_recipe_args((DataArgs, DistillationArguments), [], {}, ["--config", str(tmp_path / "missing.yaml")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [0.1\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        parse_recipe_args((DataArgs, DistillationArguments), [], {}, ["--config", str(broken)])
    with pytest.raises(SystemExit):  # no --method flag for groups without a method field
        parse_recipe_args((DataArgs, DistillationArguments), [], {"output_dir": str(tmp_path)}, ["--method", "kd"])
    assert "unrecognized arguments: --method kd" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["quickstart", "cifar", "train_teacher", "deit_tiny", "deit_small",
                                    "imagenet_resnet18", "ablation"])
def test_every_recipe_answers_help_with_its_fields(recipe, capsys):
    import importlib

    module = importlib.import_module(recipe)
    with pytest.raises(SystemExit) as done:
        if hasattr(module, "DEFAULTS") and recipe != "ablation":  # the ImageNet recipes: their config + DEFAULTS
            import imagenet

            config = "imagenet_resnet18.yaml" if recipe == "imagenet_resnet18" else "deit.yaml"
            imagenet.parse(config, module.DEFAULTS, ["--help"])
        else:
            module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--output_dir" in text or "--output_dir OUTPUT_DIR" in text
    if recipe != "ablation":
        assert "--learning_rate" in text and "--config CONFIG" in text
