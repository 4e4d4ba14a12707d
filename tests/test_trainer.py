"""DistillationTrainer behaviour on tiny models: optimizer, teacher, GA scaling, logging, saving, resuming."""

import copy
import json
import os

import pytest
import timm
import torch
from conftest import NUM_CLASSES, make_args, random_image_dataset, tiny_timm_resnet, tiny_timm_vit, tiny_vit
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TimmWrapperForImageClassification, TrainingArguments

from hf_projkd import DistillationArguments, DistillationTrainer, load_image_classifier


def _trainer(tmp_path, student=None, teacher=None, dataset=None, input_size=None, **overrides):
    dataset = dataset if dataset is not None else random_image_dataset(32)
    return DistillationTrainer(
        student if student is not None else tiny_vit(),
        teacher if teacher is not None else tiny_timm_vit(),
        make_args(tmp_path, **overrides),
        input_size=input_size,
        train_dataset=dataset,
        eval_dataset=dataset,
    )


def test_projector_is_trained_and_teacher_stays_frozen_in_eval_mode(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3)
    teacher_before = copy.deepcopy(trainer.teacher.state_dict())
    projector_before = trainer.model.projector.weight.detach().clone()
    trainer.teacher.train()  # a user mistake the trainer must undo before the teacher runs
    trainer.train()

    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in trainer.model.projector.parameters())
    assert not torch.equal(trainer.model.projector.weight, projector_before)
    assert not trainer.teacher.training
    for name, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert trainer.model.student_norm.num_batches_tracked.item() == 3  # batch statistics used every step


def test_each_loss_component_is_logged_and_sums_to_the_total(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, feature_loss_weight=2.0, logit_loss_weight=1.0, ce_weight=1.0)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        total = entry["loss_ce"] + entry["loss_logit"] + 2.0 * entry["loss_feature"]
        assert entry["loss"] == pytest.approx(total, abs=1e-3)


def _sgd_args(**overrides):
    return dict(
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        max_steps=1, train_sampling_strategy="sequential", **overrides,
    )


def test_gradient_accumulation_gives_the_full_batch_ce_and_kd_gradients(tmp_path):
    """CE and KL are per-sample means, so 2 x 8 accumulated equals 1 x 16 (the student has no batch norm)."""
    data = random_image_dataset(16)
    common = _sgd_args(feature_loss_weight=0.0, temperature=2.0)
    full = _trainer(tmp_path / "full", dataset=data, per_device_train_batch_size=16, **common)
    accumulated = _trainer(
        tmp_path / "ga", dataset=data, per_device_train_batch_size=8, gradient_accumulation_steps=2, **common
    )
    start = copy.deepcopy(full.student.state_dict())
    full.train()
    accumulated.train()
    moved = 0.0
    for name, value in full.student.state_dict().items():
        torch.testing.assert_close(accumulated.student.state_dict()[name], value, atol=1e-6, rtol=1e-5)
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-4  # the step really changed the weights


def test_gradient_accumulation_of_the_feature_term_uses_per_micro_batch_statistics(tmp_path):
    """Batch norm takes each micro-batch's own statistics and the log is taken per micro-batch, so with GA the
    feature gradient is the mean of the two half-batch LogSum gradients, exactly as with 2 devices of 8 in DDP,
    and not the full-batch gradient."""
    data = random_image_dataset(16)
    trainer = _trainer(
        tmp_path, dataset=data, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        **_sgd_args(ce_weight=0.0, logit_loss="none"),
    )
    initial = copy.deepcopy(trainer.model)
    trainer.train()

    def feature_grad(batches):
        model = copy.deepcopy(initial).train()
        for batch in batches:
            with torch.no_grad():
                teacher = trainer.teacher_adapter(batch)
            (model(batch, teacher_features=teacher.features).loss / len(batches)).backward()
        return model.projector.weight.grad

    pixels = data[0:16]["pixel_values"]
    halves = feature_grad([pixels[:8], pixels[8:]])
    whole = feature_grad([pixels])
    expected = initial.projector.weight - 0.5 * halves
    torch.testing.assert_close(trainer.model.projector.weight, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(halves, whole, atol=1e-4)  # the full batch would give another gradient


def test_evaluation_scores_the_student_and_runs_the_teacher_once_for_its_metrics(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    calls = []
    forward = trainer.teacher_forward
    monkeypatch.setattr(trainer, "teacher_forward", lambda pixels: calls.append(len(pixels)) or forward(pixels))
    first = trainer.evaluate()
    assert 0.0 <= first["eval_top1"] <= first["eval_top5"] <= 100.0
    assert sum(calls) == 32  # the teacher saw the 32 eval images once ...
    second = trainer.evaluate()
    assert sum(calls) == 32  # ... and not again: its logits are cached
    for key in ("eval_teacher_top1", "eval_teacher_top5", "eval_teacher_agreement", "eval_teacher_kl"):
        assert first[key] == second[key]  # the student did not change between the two evaluations
    logits = trainer.predict(random_image_dataset(32)).predictions
    assert logits.shape == (32, NUM_CLASSES) and sum(calls) == 32  # predict: the student's logits alone
    quiet = _trainer(tmp_path, eval_teacher_metrics=False)
    monkeypatch.setattr(quiet, "teacher_forward", lambda pixels: pytest.fail("the teacher must not run"))
    assert "eval_teacher_top1" not in quiet.evaluate()


def test_save_model_writes_the_transformers_student_only(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train()
    out = tmp_path / "student"
    trainer.save_model(str(out))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "training_args.bin"]
    reloaded = AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(4, 3, 32, 32)
    student = trainer.student.eval()
    torch.testing.assert_close(reloaded(x).logits, student(x).logits, rtol=0, atol=0)


def test_save_model_writes_a_timm_student_in_timm_hub_format(tmp_path):
    # timm's resnet10t says it expects 176 px; the data (and the ViT teacher) are 32 px, so say so
    trainer = _trainer(tmp_path, student=tiny_timm_resnet(), teacher=tiny_timm_vit(), input_size=(3, 32, 32))
    trainer.train()
    out = tmp_path / "student"
    trainer.save_model(str(out))
    assert "architecture" in json.loads((out / "config.json").read_text())
    x = torch.randn(4, 3, 32, 32)
    expected = trainer.student.eval()(x)
    by_timm = timm.create_model(
        "resnet10t", pretrained=True, num_classes=NUM_CLASSES,
            pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=NUM_CLASSES),
    ).eval()
    # the same weights; the loaders' modules may sum in another order (thread count), so up to float rounding
    torch.testing.assert_close(by_timm(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(load_image_classifier(str(out)).eval()(x), expected, rtol=1e-5, atol=1e-6)
    wrapper = TimmWrapperForImageClassification.from_pretrained(out).eval()
    torch.testing.assert_close(wrapper(x).logits, expected, rtol=1e-5, atol=1e-6)


def test_resume_restores_student_projector_and_normaliser_state(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, lr_scheduler_type="constant")
    straight = _trainer(tmp_path / "straight", **common)
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert any(key.startswith("projector.") for key in load_file(checkpoint / "model.safetensors"))

    resumed = _trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = straight.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)
    assert resumed.model.student_norm.num_batches_tracked.item() == 4


def test_mismatched_classes_and_missing_teacher_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="student predicts 5 classes but the teacher 7"):
        _trainer(tmp_path, teacher=tiny_timm_vit(num_classes=7))
    _trainer(tmp_path, teacher=tiny_timm_vit(num_classes=7), logit_loss="none")  # features only: fine
    with pytest.raises(ValueError, match="No teacher"):
        DistillationTrainer(tiny_vit(), None, make_args(tmp_path))
    with pytest.raises(TypeError, match="needs DistillationArguments"):
        DistillationTrainer(tiny_vit(), tiny_timm_vit(), TrainingArguments(output_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("feature_loss", "cosine", "feature_loss='cosine' is not supported"),
        ("feature_norm", "group", "feature_norm='group' is not supported"),
        ("projector", "conv", "projector='conv' is not supported"),
        ("logit_loss", "ce", "logit_loss='ce' is not supported"),
        ("feature_loss_weight", -1.0, "feature_loss_weight must be >= 0"),
        ("logsum_exponent", 0.0, "logsum_exponent must be > 0"),
        ("temperature", -2.0, "temperature must be > 0"),
        ("student_feature_dim", 0, "student_feature_dim must be a positive int"),
    ],
)
def test_arguments_are_validated_at_construction(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), **{field: value})


def test_default_arguments_are_the_paper_imagenet_cnn_setting(tmp_path):
    args = DistillationArguments(output_dir=str(tmp_path))
    assert (args.feature_loss, args.feature_loss_weight, args.logsum_exponent) == ("logsum", 2.0, 4.0)
    assert (args.projector, args.feature_norm) == ("linear", "batchnorm")
    assert (args.logit_loss, args.logit_loss_weight, args.temperature, args.ce_weight) == ("kl", 1.0, 1.0, 1.0)


def test_weight_decay_filters(tmp_path):
    trainer = _trainer(tmp_path, weight_decay_filter="no_1d")
    names = set(trainer.get_decay_parameter_names(trainer.model))
    assert "projector.weight" in names and "projector.bias" not in names
    assert not any(n.endswith(("cls_token", "position_embeddings")) for n in names)
    everything = _trainer(tmp_path, weight_decay_filter="all")
    assert set(everything.get_decay_parameter_names(everything.model)) == {
        n for n, _ in everything.model.named_parameters()
    }

