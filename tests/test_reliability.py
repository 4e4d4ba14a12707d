"""Bad inputs of the setup and the data give a clear error (what was expected, what was found, how to fix it),
early; a diverging run stops before writing; checkpoints are verified before a resume.

Each test exercises one guard and would fail without it. Tiny random models and data only, no network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, make_args, random_image_dataset, tiny_timm_resnet, tiny_timm_vit, tiny_vit
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file
from torch import nn

from hf_projkd import DistillationArguments, DistillationTrainer, ModelFeatures, adapter_for, load_image_classifier
from hf_projkd.checkpointing import (
    CHECKPOINT_MANIFEST,
    IncompleteCheckpointError,
    checkpoint_problem,
    latest_complete_checkpoint,
    mark_checkpoint_complete,
    resolve_resume_checkpoint,
)
from hf_projkd.data import check_label_range, check_splits_not_empty, load_image_dataset, resolve_columns
from hf_projkd.families import probe_dims
from hf_projkd.validation import NonFiniteLossError, NonFiniteLossGuard, TeacherInputNormalizer


def _trainer(tmp_path, student=None, teacher=None, dataset=None, **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        student if student is not None else tiny_vit(),
        teacher if teacher is not None else tiny_timm_vit(),
        make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else random_image_dataset(16),
    )


def _named(model: nn.Module, names: list[str]) -> nn.Module:
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    return model


# -- teacher vs student --------------------------------------------------------------------------------------------
def test_label_names_that_differ_between_student_and_teacher_stop_a_logit_loss(tmp_path):
    names = ["cat", "dog", "bird", "fish", "frog"]
    with pytest.raises(ValueError, match=r"class names differ \(different classes\).*\(4, 'frog', 'horse'\)"):
        _trainer(tmp_path, _named(tiny_vit(), names), _named(tiny_vit(seed=3), names[:4] + ["horse"]))
    with pytest.raises(ValueError, match="the same classes in another order"):
        _trainer(tmp_path, _named(tiny_vit(), names), _named(tiny_vit(seed=3), names[::-1]))
    # same names, default names, or no logit loss: fine
    _trainer(tmp_path, _named(tiny_vit(), names), _named(tiny_vit(seed=3), names))
    _trainer(tmp_path, tiny_vit(), tiny_vit(seed=3))
    _trainer(tmp_path, _named(tiny_vit(), names), _named(tiny_vit(seed=3), names[::-1]), logit_loss="none")


def test_teacher_inputs_are_renormalised_when_its_mean_std_differ(tmp_path):
    student, teacher = tiny_timm_resnet(), tiny_timm_vit()  # ImageNet mean/std vs 0.5/0.5
    trainer = DistillationTrainer(student, teacher, make_args(tmp_path), input_size=(3, IMAGE_SIZE, IMAGE_SIZE),
                                  train_dataset=random_image_dataset(16))
    raw = torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    mean_s, std_s = (torch.tensor(v).view(1, 3, 1, 1) for v in adapter_for(student).input_normalization().values)
    for_student = (raw - mean_s) / std_s
    expected_for_teacher = (raw - 0.5) / 0.5
    got = trainer._teacher_inputs({"pixel_values": for_student})
    torch.testing.assert_close(got, expected_for_teacher, atol=1e-5, rtol=1e-5)
    # a batch with its own teacher_pixel_values is used as given
    assert trainer._teacher_inputs({"pixel_values": for_student, "teacher_pixel_values": raw}) is raw

    seen = []
    real_forward = trainer.teacher_forward
    trainer.teacher_forward = lambda pixels: seen.append(pixels.clone()) or real_forward(pixels)
    trainer.compute_loss(trainer.model.train(), {"pixel_values": for_student, "labels": torch.zeros(4).long()})
    torch.testing.assert_close(seen[0], expected_for_teacher, atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match=r"mean/std .*0\.485.* but the teacher expects .*0\.5.*renormalize_teacher_"):
        DistillationTrainer(tiny_timm_resnet(), tiny_timm_vit(), make_args(tmp_path, renormalize_teacher_inputs=False),
                            input_size=(3, IMAGE_SIZE, IMAGE_SIZE))


def test_normalizer_maps_student_pixels_to_teacher_pixels():
    student, teacher = ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)), ((0.4, 0.4, 0.4), (0.2, 0.3, 0.4))
    raw = torch.rand(2, 3, 5, 5)

    def view(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values).view(1, 3, 1, 1)

    x_student = (raw - view(student[0])) / view(student[1])
    torch.testing.assert_close(TeacherInputNormalizer(student, teacher)(x_student),
                               (raw - view(teacher[0])) / view(teacher[1]))


def test_teacher_that_only_runs_at_its_own_input_size_needs_teacher_pixel_values(tmp_path):
    small = 16  # the ViT teacher has a fixed 32 px patch grid; the CNN student runs at 16 px
    trainer = DistillationTrainer(tiny_timm_resnet(), tiny_timm_vit(), make_args(tmp_path, logit_loss="none"),
                                  input_size=(3, small, small))
    batch = {"pixel_values": torch.randn(4, 3, small, small), "labels": torch.zeros(4).long()}
    message = (r"teacher .*failed on inputs of shape \(4, 3, 16, 16\).*declares inputs of \(3, 32, 32\)"
               r".*teacher_pixel_values")
    with pytest.raises(ValueError, match=message):
        trainer.compute_loss(trainer.model.train(), batch)
    loss = trainer.compute_loss(trainer.model, {**batch, "teacher_pixel_values": torch.randn(4, 3, 32, 32)})
    assert torch.isfinite(loss)


def test_feature_dims_that_cannot_be_inferred_or_do_not_match_are_errors(tmp_path):
    class Plain(nn.Module):  # no config, no pretrained_cfg: nothing says its input size
        def __init__(self) -> None:
            super().__init__()
            self.body, self.classifier = nn.Flatten(), nn.Linear(12, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.body(x))

    assert probe_dims(adapter_for(Plain())) == (12, 5)  # from its classifier head, no forward needed
    with pytest.raises(ValueError, match=r"Cannot infer the feature dimension of Plain.*input_size=\(channels"):
        probe_dims(adapter_for(Plain(), "body"))  # a named feature module: only a dummy forward can tell
    assert probe_dims(adapter_for(Plain(), "body"), (3, 2, 2)) == (12, 5)
    with pytest.raises(ValueError, match=r"dummy forward of Plain at input size \(3, 4, 4\) failed"):
        probe_dims(adapter_for(Plain(), "body"), (3, 4, 4))
    with pytest.raises(ValueError, match="Cannot tell where the pre-logit features of Sequential"):
        adapter_for(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)))
    with pytest.raises(ValueError, match=r"student_feature_dim=99 was given, but the student's features have dim 32"):
        _trainer(tmp_path, student_feature_dim=99)
    with pytest.raises(ValueError, match=r"teacher_feature_dim=32 was given, but the teacher's features have dim 48"):
        _trainer(tmp_path, teacher_feature_dim=32)


# -- data ----------------------------------------------------------------------------------------------------------
def test_labels_outside_the_class_range_stop_before_training(tmp_path):
    data = random_image_dataset(16).to_dict()
    data["labels"] = [int(v) for v in data["labels"]]
    data["labels"][3] = 7
    with pytest.raises(ValueError, match=r"labels in \[0, 7\], but the model has 5 classes.*rows \[3\].*num_labels=8"):
        _trainer(tmp_path, dataset=Dataset.from_dict(data).with_format("torch"))
    unlabelled = Dataset.from_dict({"label": [0, -1, 2]})
    with pytest.raises(ValueError, match="-1 usually mark an unlabelled split"):
        check_label_range(unlabelled, 5, "label", split="test")
    check_label_range(Dataset.from_dict({"label": [0, 4, 2]}), 5, "label")
    check_label_range(Dataset.from_dict({"label": [[0.2, 0.8], [1.0, 0.0]]}), 2, "label")  # soft labels: no check


def test_empty_datasets_and_splits_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"train dataset is empty \(0 examples\)"):
        _trainer(tmp_path, dataset=random_image_dataset(16).select([]))
    with pytest.raises(ValueError, match=r"validation dataset is empty"):
        DistillationTrainer(tiny_vit(), tiny_timm_vit(), make_args(tmp_path), train_dataset=random_image_dataset(16),
                            eval_dataset={"validation": random_image_dataset(16).select([])})
    folder = tmp_path / "data"
    folder.mkdir()
    Dataset.from_dict({"image": ["a", "b"], "label": [0, 1]}).to_parquet(folder / "train-00000.parquet")
    Dataset.from_dict({"image": ["a"], "label": [0]}).select([]).to_parquet(folder / "test-00000.parquet")
    with pytest.raises(ValueError, match=r"split\(s\) \['test'\] are empty"):
        load_image_dataset(str(folder))
    splits = DatasetDict(train=Dataset.from_dict({"label": [0]}), validation=Dataset.from_dict({"label": []}))
    with pytest.raises(ValueError, match=r"\['validation'\] are empty \(sizes: \{'train': 1, 'validation': 0"):
        check_splits_not_empty(splits, "my-data")


def test_missing_image_or_label_columns_name_the_columns_and_the_flag(tmp_path):
    dataset = Dataset.from_dict({"picture": [1], "target": [0]})
    with pytest.raises(ValueError, match=r"No image column.*has \['picture', 'target'\].*--image_column=<column>"):
        resolve_columns(dataset)
    with pytest.raises(ValueError, match=r"No label column.*--label_column=<column>"):
        resolve_columns(dataset, image_column="picture")
    with pytest.raises(ValueError, match=r"--label_column='y' is not a column.*\['picture', 'target'\]"):
        resolve_columns(dataset, image_column="picture", label_column="y")
    assert resolve_columns(dataset, "picture", "target") == ("picture", "target")
    trainer = _trainer(tmp_path)
    with pytest.raises(KeyError, match=r"no 'pixel_values' \(its keys: \['image', 'labels'\]\).*--image_column"):
        trainer.compute_loss(trainer.model.train(), {"image": torch.randn(2, 3, 32, 32), "labels": torch.zeros(2)})


def test_batch_norm_on_a_per_device_batch_of_one_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"per_device_train_batch_size=1, but feature_norm='batchnorm' needs at least"):
        _trainer(tmp_path, per_device_train_batch_size=1)
    with pytest.raises(ValueError, match=r"17 training examples in batches of 8 leave a last batch of 1"):
        _trainer(tmp_path, dataset=random_image_dataset(17))
    _trainer(tmp_path, dataset=random_image_dataset(17), dataloader_drop_last=True)
    _trainer(tmp_path, per_device_train_batch_size=1, feature_norm="layernorm")


# -- during training -----------------------------------------------------------------------------------------------
def test_non_finite_loss_stops_names_the_component_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=2, save_total_limit=1)
    real_forward = trainer.teacher_forward

    def diverging_teacher(pixels: torch.Tensor) -> ModelFeatures:
        out = real_forward(pixels)
        if trainer.state.global_step >= 2:  # from step 3 on, the teacher features are NaN
            out.features = torch.full_like(out.features, float("nan"))
        return out

    trainer.teacher_forward = diverging_teacher
    checkpoint = tmp_path / "checkpoint-2"
    with pytest.raises(NonFiniteLossError, match=rf"between steps 2 and 3, in loss_feature\..*{checkpoint}"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoint_problem(checkpoint) is None
    state = load_file(checkpoint / "model.safetensors")  # student, projector and normalisers
    assert any(k.startswith("projector.") for k in state) and any(k.startswith("student.") for k in state)
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_non_finite_loss_on_another_process_stops_this_one_too():
    """In DDP each process sees its own loss: the flags are summed over processes so that all stop together."""
    guard = NonFiniteLossGuard()
    guard.observe({"loss": torch.tensor(1.0), "loss_ce": torch.tensor(0.5), "loss_feature": torch.tensor(0.2)})
    other_process = torch.tensor([0, 0, 1])  # sorted names: loss, loss_ce, loss_feature
    with pytest.raises(NonFiniteLossError, match=r"between steps 0 and 5, in loss_feature\."):
        guard.check(5, reduce=lambda flags: flags + other_process)
    guard.observe({"loss": torch.tensor(float("inf"))})
    with pytest.raises(NonFiniteLossError, match=r"in loss \(the weighted sum; every component was finite\)"):
        guard.check(6)
    guard.observe({"loss": torch.tensor(1.0)})
    guard.check(7, reduce=lambda flags: flags)
    assert guard.checked_step == 7


def test_a_crash_before_the_manifest_keeps_the_previous_checkpoint_despite_save_total_limit(tmp_path, monkeypatch):
    """Old checkpoints are rotated away only after the new one is marked complete."""
    import hf_projkd.trainer as trainer_module

    real_mark = trainer_module.mark_checkpoint_complete

    def crash_at_step_4(folder, step=None):
        if step == 4:
            raise KeyboardInterrupt("killed after writing checkpoint-4, before its manifest")
        return real_mark(folder, step)

    monkeypatch.setattr(trainer_module, "mark_checkpoint_complete", crash_at_step_4)
    trainer = _trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert resolve_resume_checkpoint(True, tmp_path) == str(tmp_path / "checkpoint-2")


def test_a_truncated_checkpoint_is_detected_on_resume(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    good, newest = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    state_file = newest / "model.safetensors"
    state_file.write_bytes(state_file.read_bytes()[:-10])
    message = rf"has \d+ bytes, the manifest recorded \d+.*Resume from {good}"
    with pytest.raises(IncompleteCheckpointError, match=message):
        _trainer(tmp_path, max_steps=3).train(resume_from_checkpoint=str(newest))
    assert latest_complete_checkpoint(tmp_path) == good
    # accepted by hand (manifest rewritten), the truncated file is still caught, by name, before it is read
    mark_checkpoint_complete(newest)
    with pytest.raises(OSError, match="model.safetensors is truncated or corrupt"):
        _trainer(tmp_path, max_steps=3).train(resume_from_checkpoint=str(newest))


def test_resume_picks_only_complete_checkpoints(tmp_path):
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(IncompleteCheckpointError, match=r"holds no intact checkpoint \(found none\)"):
        resolve_resume_checkpoint(True, tmp_path)
    for step in (2, 4, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "state.txt").write_bytes(b"x" * step)
    mark_checkpoint_complete(tmp_path / "checkpoint-2")
    mark_checkpoint_complete(tmp_path / "checkpoint-4")
    assert resolve_resume_checkpoint(True, tmp_path) == str(tmp_path / "checkpoint-4")  # 10 > 4 numerically
    (tmp_path / "checkpoint-4" / "state.txt").unlink()
    assert "state.txt is missing" in checkpoint_problem(tmp_path / "checkpoint-4")
    assert resolve_resume_checkpoint(True, tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(IncompleteCheckpointError, match=r"checkpoint-10 has no checkpoint_complete.json"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-10"), tmp_path)
    with pytest.raises(IncompleteCheckpointError, match=r"checkpoint-99 does not exist"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-99"), tmp_path)
    assert (tmp_path / "checkpoint-2" / CHECKPOINT_MANIFEST).is_file()


# -- loading and arguments -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-org/no-such-model", "HF_HUB_OFFLINE is set, so Hub ids only load from the local cache"),
        ("timm/no_such_model.in1k", "HF_HUB_OFFLINE is set, so Hub ids only load from the local cache"),
        ("./no/such/folder", "there is no such file or folder"),
        ("teachers/resnet32x4", "There is no local folder 'teachers/resnet32x4'.*HF_HUB_OFFLINE is set"),
    ],
)
def test_a_teacher_that_cannot_be_loaded_offline_is_one_clear_error(tmp_path, name, message):
    with pytest.raises(OSError, match=rf"(?s)Could not load the model '{name}'.*{message}"):
        load_image_classifier(name)
    with pytest.raises(OSError, match="Could not load the model"):
        DistillationTrainer(tiny_vit(), name, make_args(tmp_path))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ce_weight", -0.5, "ce_weight must be >= 0"),
        ("dkd_beta", -8.0, "dkd_beta must be >= 0"),
        ("logsum_exponent", -4.0, "logsum_exponent must be > 0"),
        ("weight_decay_filter", "bias", "weight_decay_filter='bias' is not supported"),
        ("label_smoothing_factor", 1.0, r"label_smoothing_factor must be in \[0, 1\)"),
    ],
)
def test_more_arguments_are_validated_at_construction(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), **{field: value})


def test_all_zero_loss_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match="All loss weights are 0"):
        DistillationArguments(output_dir=str(tmp_path), feature_loss_weight=0, logit_loss_weight=0, ce_weight=0)


def test_check_label_range_reads_the_arrow_column_through_index_mappings():
    labels = np.random.default_rng(0).integers(0, 1000, size=200_000)
    reversed_view = Dataset.from_dict({"label": labels}).select(range(199_999, -1, -1))  # an indices mapping
    check_label_range(reversed_view, 1000, "label")
    labels[123_456] = 1000
    with pytest.raises(ValueError, match=r"rows \[123456\]"):
        check_label_range(Dataset.from_dict({"label": labels}), 1000, "label")
    labels[0] = -3  # the view's last row is row 0: found through the indices mapping
    with pytest.raises(ValueError, match=r"labels in \[-3, 1000\].*rows \[76543, 199999\]"):
        check_label_range(Dataset.from_dict({"label": labels}).select(range(199_999, -1, -1)), 1000, "label")
