"""Recipe argument parsing: recipe defaults < --config file < command line, and typos are errors."""

import json
from dataclasses import dataclass

import pytest

from hf_projkd import DistillationArguments
from hf_projkd.cli import parse_recipe_args


@dataclass
class DataArgs:
    dataset: str = "uoft-cs/cifar100"
    max_train_samples: int | None = None


def test_defaults_then_config_file_then_cli(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.2\ndataset: local/cifar\nfeature_norm: l2\n")
    data, args = parse_recipe_args(
        (DataArgs, DistillationArguments),
        defaults={"output_dir": str(tmp_path), "learning_rate": 0.05, "max_train_samples": 10},
        argv=["--config", str(config), "--feature_norm", "layernorm"],
    )
    assert data == DataArgs(dataset="local/cifar", max_train_samples=10)  # file beats default
    assert args.learning_rate == 0.2  # file beats recipe default
    assert args.feature_norm == "layernorm"  # CLI beats file
    assert args.output_dir == str(tmp_path)


def test_json_config_and_validation_of_values(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"logsum_exponent": 0}))
    with pytest.raises(ValueError, match="logsum_exponent must be > 0"):
        parse_recipe_args((DataArgs, DistillationArguments), {"output_dir": str(tmp_path)}, ["--config", str(config)])


def test_unknown_fields_and_missing_file_are_errors(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown fields \['learning_rat'\]"):
        parse_recipe_args((DataArgs, DistillationArguments), {"output_dir": str(tmp_path)}, ["--config", str(config)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_recipe_args((DataArgs, DistillationArguments), {}, ["--config", str(tmp_path / "missing.yaml")])
