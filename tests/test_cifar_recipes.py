"""CIFAR recipes: method presets and overrides, the CRD step schedule, resume, and every method end to end on real
data."""

from __future__ import annotations

import json
from pathlib import Path

import cifar
import pytest
import torch
import train_teacher
from conftest import CIFAR10, RESNET20, ROOT, make_args, needs_shared, tiny_timm_resnet
from transformers import AutoModelForImageClassification

from hf_projkd import METHODS, DistillationArguments, DistillationTrainer
from hf_projkd.cli import read_config_file
from hf_projkd.data.cifar import CifarCollator, CifarTensorDataset, DecodedImages, DecodedSplits
from hf_projkd.models import create_cifar_model

CRD_PROTOCOL = {k: v for k, v in read_config_file(cifar.PROTOCOL).items() if k != "method"}


def _parse(argv: list[str]) -> tuple[cifar.CifarRecipeArguments, DistillationArguments]:
    return cifar.parse(argv)


def test_method_presets_and_crd_defaults(tmp_path: Path) -> None:
    recipe, args = _parse(["--method", "kd", "--output_dir", str(tmp_path)])
    assert recipe.method == "kd"
    assert (args.temperature, args.ce_weight, args.logit_loss_weight, args.feature_loss_weight) == (4.0, 0.1, 0.9, 0)
    assert (args.learning_rate, args.per_device_train_batch_size, args.weight_decay) == (0.05, 64, 5e-4)
    assert args.num_train_epochs == 240 and args.optim == "sgd" and args.weight_decay_filter == "all"
    _, srd = _parse(["--method", "srd+kd", "--output_dir", str(tmp_path)])
    assert (srd.feature_loss_weight, srd.logsum_exponent, srd.logit_loss, srd.temperature) == (2.0, 4.0, "kl", 1.0)
    _, srd_only = _parse(["--method", "srd", "--output_dir", str(tmp_path)])
    assert srd_only.logit_loss == "none" and srd_only.feature_loss_weight == 2.0


def test_cli_and_config_file_override_the_preset(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("method: dkd\ndkd_beta: 2.0\nlearning_rate: 0.01\n")
    recipe, args = _parse(["--config", str(config), "--temperature", "2", "--output_dir", str(tmp_path)])
    assert recipe.method == "dkd" and args.logit_loss == "dkd"
    assert (args.dkd_beta, args.learning_rate, args.temperature) == (2.0, 0.01, 2.0)


def test_unknown_method_and_bad_schedule_are_clear_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        _parse(["--method", "fitnet"])
    assert "argument --method: invalid choice: 'fitnet' (choose from 'ce', 'kd'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fractions of the run in"):
        _parse(["--lr_decay_at", "150,180", "--output_dir", str(tmp_path)])


def test_the_equals_form_and_missing_values_are_parsed_like_the_space_form(tmp_path: Path, capsys) -> None:
    """Issue 12.2: ``--method=kd`` and ``--config=x.yaml`` were not seen; a flag without its value was an IndexError."""
    config = tmp_path / "run.yaml"
    config.write_text("dkd_beta: 3.0\n")
    recipe, args = _parse([f"--config={config}", "--method=dkd", f"--output_dir={tmp_path}"])
    assert recipe.method == "dkd" and args.logit_loss == "dkd" and args.dkd_beta == 3.0
    for flag in ("--method", "--config"):
        with pytest.raises(SystemExit):
            _parse([flag])
        assert f"argument {flag}: expected one argument" in capsys.readouterr().err


def test_step_decay_at_fractions_of_the_run_and_decay_on_all_parameters(tmp_path: Path) -> None:
    args = DistillationArguments.for_method(
        "ce", **{**CRD_PROTOCOL, "output_dir": str(tmp_path), "use_cpu": True, "lr_decay_at": [0.5, 0.75]})
    trainer = DistillationTrainer(create_cifar_model("resnet8", num_labels=10), None, args)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    rates = []
    for _ in range(100):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[49] == pytest.approx(0.05) and rates[50] == pytest.approx(0.005)
    assert rates[74] == pytest.approx(0.005) and rates[75] == pytest.approx(0.0005)
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(id(p) in decayed for p in trainer.model.parameters()), "CRD decays BN and bias parameters too"
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9


def _tiny_argv(method: str, output_dir: Path, teacher: Path | str = RESNET20) -> list[str]:
    return [
        "--method", method, "--student", "resnet8", "--teacher", str(teacher), "--dataset", str(CIFAR10),
        "--max_train_samples", "48", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
        "--max_steps", "2", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true",
        "--output_dir", str(output_dir),
    ]


EXPECTED_TERMS = {
    "ce": set(),
    "kd": {"loss_logit"},
    "dkd": {"loss_logit"},
    "srd": {"loss_feature"},
    "srd+kd": {"loss_feature", "loss_logit"},
    "srd+dkd": {"loss_feature", "loss_logit"},
}


@needs_shared
@pytest.mark.parametrize("method", METHODS)
def test_recipe_runs_each_method_on_cifar10(method: str, tmp_path: Path) -> None:
    results = cifar.main(_tiny_argv(method, tmp_path))
    assert results["method"] == method and results["global_steps"] == 2
    assert results["train_samples"] == 48 and results["eval_samples"] == 32
    assert 0.0 <= results["top1"] <= 100.0
    log = results["last_train_log"]
    terms = {name for name in ("loss_logit", "loss_feature") if name in log}
    assert terms == EXPECTED_TERMS[method], log
    assert json.loads((tmp_path / "cifar_results.json").read_text())["top1"] == results["top1"]
    student = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert student.config.architecture == "resnet8" and student.config.num_labels == 10
    assert student.config.id2label[0] == "airplane"


@needs_shared
def test_trained_teacher_folder_feeds_the_distillation_recipe(tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    argv = _tiny_argv("ce", teacher_dir)
    teacher_argv = [a for a in argv[2:] if a not in ("--teacher", str(RESNET20))]
    teacher_results = train_teacher.main(teacher_argv)
    assert teacher_results["method"] == "ce" and teacher_results["student"] == "resnet8"
    teacher = AutoModelForImageClassification.from_pretrained(teacher_dir)

    student_dir = tmp_path / "student"
    results = cifar.main(_tiny_argv("srd+kd", student_dir, teacher=teacher_dir))
    assert results["teacher"] == str(teacher_dir) and results["global_steps"] == 2
    # the saved folder is the trained teacher: it reproduces the accuracy the recipe measured
    recipe = cifar.CifarRecipeArguments(dataset=str(CIFAR10), max_train_samples=48, max_eval_samples=32)
    data = cifar.load_data(recipe)
    batch = CifarCollator(recipe.mean, recipe.std)(CifarTensorDataset(data.eval).__getitems__(list(range(32))))
    with torch.no_grad():
        predictions = teacher.eval()(batch["pixel_values"]).logits.argmax(-1)
    assert 100.0 * (predictions == batch["labels"]).float().mean().item() == pytest.approx(teacher_results["top1"])
    with pytest.raises(SystemExit, match="cross-entropy only"):
        train_teacher.main(["--method", "kd"])


def test_distillation_methods_need_a_teacher(tmp_path: Path) -> None:
    if not CIFAR10.is_dir():
        pytest.skip("needs ../shared/data/cifar10-jpeg")
    argv = [a for a in _tiny_argv("kd", tmp_path) if a not in ("--teacher", str(RESNET20))]
    with pytest.raises(ValueError, match="--method kd needs a teacher"):
        cifar.main(argv)


def test_seed_fixes_the_student_initialisation(tmp_path: Path) -> None:
    images = DecodedImages(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.arange(8) % 2)
    data = DecodedSplits(images, images, ["a", "b"])

    def first_weight(seed: int) -> torch.Tensor:
        recipe, args = _parse(["--method", "ce", "--student", "resnet8", "--output_dir", str(tmp_path), "--use_cpu",
                               "true", "--seed", str(seed)])
        trainer = cifar.build_trainer(recipe, args, data)
        torch.rand(3)  # moving the global RNG afterwards must not matter
        return next(trainer.model.parameters()).detach().clone()

    assert torch.equal(first_weight(3), first_weight(3))
    assert not torch.equal(first_weight(3), first_weight(4))


def test_the_ce_method_trains_and_evaluates_a_timm_model_without_a_teacher(tmp_path: Path, tiny_dataset) -> None:
    model = tiny_timm_resnet()
    before = [p.detach().clone() for p in model.parameters()]
    args = make_args(tmp_path, optim="sgd", learning_rate=0.1, label_smoothing_factor=0.1, ce_weight=1.0,
                     logit_loss="none", feature_loss_weight=0.0)
    trainer = DistillationTrainer(model, None, args, train_dataset=tiny_dataset, eval_dataset=tiny_dataset)
    batch = {"pixel_values": tiny_dataset[:4]["pixel_values"], "labels": tiny_dataset[:4]["labels"]}
    with torch.no_grad():
        smoothed = torch.nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"], label_smoothing=0.1)
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(smoothed.item(), rel=1e-5)
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    metrics = trainer.evaluate()
    assert {"eval_top1", "eval_top5", "eval_loss"} <= set(metrics)  # labels found although timm has no `labels` arg
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_shipped_cifar100_config_parses_to_the_paper_setting() -> None:
    config = ROOT / "recipes" / "configs" / "cifar100_resnet32x4_resnet8x4.yaml"
    recipe, args = _parse(["--config", str(config)])
    assert (recipe.method, recipe.student, recipe.dataset, recipe.label_column) == (
        "srd+kd", "resnet8x4", "uoft-cs/cifar100", "fine_label"
    )
    assert (args.feature_loss_weight, args.temperature) == (2.0, 1.0)
    assert (args.num_train_epochs, args.learning_rate) == (240, 0.05)
    assert args.lr_decay_fractions == (0.625, 0.75, 0.875)
    assert args.teacher_model_name_or_path == "teachers/resnet32x4_cifar100"


@needs_shared
def test_the_recipe_resumes_from_a_path_or_true_and_never_restarts_over_checkpoints(tmp_path: Path) -> None:
    """Issue 12.1: ``--resume_from_checkpoint <checkpoint>`` was ignored, the run restarted at step 1 and rotation
    deleted the checkpoint. Now a resumed run continues from it and ends where an uninterrupted run ends."""
    def argv(folder: Path, *extra: str) -> list[str]:
        return [*_tiny_argv("srd+kd", folder), "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
                "--save_total_limit", "3", *extra]

    cifar.main(argv(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    cifar.main(argv(interrupted))
    with pytest.raises(FileExistsError, match=r"already holds checkpoints .* \(--resume_from_checkpoint true"):
        cifar.main(argv(interrupted))  # starting afresh over complete checkpoints is refused
    assert [p.name for p in sorted(interrupted.glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2",
                                                                         "checkpoint-3"]
    resumed = cifar.main(argv(interrupted, "--resume_from_checkpoint", str(interrupted / "checkpoint-1")))
    assert resumed["global_steps"] == 3 and resumed["last_train_log"]["step"] == 3
    state = json.loads((interrupted / "checkpoint-3" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]  # steps 2-3 resumed after 1
    straight = AutoModelForImageClassification.from_pretrained(tmp_path / "straight")
    again = AutoModelForImageClassification.from_pretrained(interrupted)
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # augmentation, data order and weights all replayed
    latest = cifar.main(argv(interrupted, "--resume_from_checkpoint", "true", "--max_steps", "4"))
    assert latest["global_steps"] == 4 and latest["last_train_log"]["step"] == 4
