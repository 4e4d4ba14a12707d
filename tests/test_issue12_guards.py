"""Issue 12, "no silent wrong result, no lost checkpoint": one test per item that had no dedicated test elsewhere.

Already covered elsewhere: 1, 2 and 16 for CIFAR (test_cifar_recipes.py, test_cifar_data.py), 10 (test_families.py),
15 (test_distributed.py), the Pillow 13 posterize of 11 (test_imagenet_recipes.py), the card's schedule and usage
snippet of 14 (test_hub.py). Each test here fails when its guard is removed (tests/scripts/guard_mutations.py
checks that). The last section holds the tests of what benchmarks/bad_inputs_probe.py found. Tiny models, generated
data, no network.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import (
    IMAGE_SIZE,
    NUM_CLASSES,
    ROOT,
    make_args,
    random_image_dataset,
    tiny_timm_resnet,
    tiny_timm_vit,
    tiny_vit,
)
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from torch import nn
from transformers import ViTForImageClassification

from hf_projkd import (
    DistillationTrainer,
    IncompleteCheckpointError,
    ModelFeatures,
    NonFiniteLossError,
    OutputDirInUseError,
    ResumeMismatchError,
    TeacherCheckError,
    adapter_for,
    create_student,
    load_image_classifier,
)
from hf_projkd.checkpointing import mark_checkpoint_complete

TEACHER_STATS = ((0.2, 0.3, 0.4), (0.3, 0.2, 0.25))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLASSES = ["ant", "bee", "cat", "dog", "eel"]


# -- helpers -----------------------------------------------------------------------------------------------------
class BrightnessTeacher(nn.Module):
    """A teacher that is right by construction: class k is the k-th brightness band of the raw image, read after
    undoing ITS input normalisation, so it scores 100 % when fed as it expects and poorly otherwise."""

    def __init__(self, stats=TEACHER_STATS, names: list[str] | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(stats[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(stats[1]).view(1, 3, 1, 1))
        self.classifier = nn.Linear(NUM_CLASSES, NUM_CLASSES)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(NUM_CLASSES))
            self.classifier.bias.zero_()
        self.config = SimpleNamespace(image_mean=list(stats[0]), image_std=list(stats[1]), num_labels=NUM_CLASSES,
                                      id2label=dict(enumerate(names)) if names else None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        level = (pixel_values * self.std + self.mean).mean(dim=(1, 2, 3))
        centres = (torch.arange(NUM_CLASSES, device=level.device) + 0.5) / NUM_CLASSES
        return self.classifier(-(((level[:, None] - centres) * 20) ** 2))


def brightness_dataset(n: int, stats, permutation: list[int] | None = None) -> Dataset:
    """Images of class k have raw pixels around (k + 0.5) / 5, normalised with ``stats``; labels optionally
    permuted (label = permutation[k])."""
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(n) % NUM_CLASSES
    raw = (classes.float() + 0.5)[:, None, None, None] / NUM_CLASSES
    raw = raw + (torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) - 0.5) * 0.1
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    labels = classes if permutation is None else torch.tensor(permutation)[classes]
    return Dataset.from_dict({"pixel_values": ((raw - mean) / std).numpy(), "labels": labels.numpy()}
                             ).with_format("torch")


def declaring(model: nn.Module, stats) -> nn.Module:
    """A transformers student whose config declares the mean/std its data is normalised with."""
    model.config.image_mean, model.config.image_std = list(stats[0]), list(stats[1])
    return model


def _trainer(output_dir, student=None, teacher=None, dataset=None, **overrides) -> DistillationTrainer:
    return DistillationTrainer(
        student if student is not None else tiny_vit(),
        teacher if teacher is not None else tiny_timm_vit(),
        make_args(output_dir, **overrides),
        train_dataset=dataset if dataset is not None else random_image_dataset(16),
    )


def _checkpointed_run(output_dir: Path, **overrides) -> DistillationTrainer:
    """Two steps with a checkpoint after each: checkpoint-1 and checkpoint-2."""
    trainer = _trainer(output_dir, teacher_check="off", save_strategy="steps", save_steps=1, **overrides)
    trainer.train()
    return trainer


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# -- 3: one module as student and teacher --------------------------------------------------------------------------
def test_3_the_same_module_as_student_and_teacher_is_refused(tmp_path):
    model = tiny_vit()
    with pytest.raises(ValueError, match=r"same module was passed as student and teacher.*copy\.deepcopy"):
        DistillationTrainer(model, model, make_args(tmp_path))
    DistillationTrainer(model, tiny_vit(seed=3), make_args(tmp_path))  # two modules: fine


# -- 4: resuming another run -----------------------------------------------------------------------------------------
def test_4_resuming_with_another_teacher_student_or_feature_weight_is_refused(tmp_path):
    _checkpointed_run(tmp_path)
    checkpoint = str(tmp_path / "checkpoint-2")

    def resume(**changes):
        teacher = changes.pop("teacher", None)
        student = changes.pop("student", None)
        trainer = _trainer(tmp_path, student=student, teacher=teacher, teacher_check="off", max_steps=3, **changes)
        trainer.train(resume_from_checkpoint=checkpoint)

    with pytest.raises(ResumeMismatchError, match=r"other settings: teacher\.weights_sha256: '[0-9a-f]+' vs"):
        resume(teacher=tiny_timm_vit(seed=9))  # same architecture, other weights
    config = tiny_vit().config
    config.num_hidden_layers = 3
    deeper = ViTForImageClassification(config)  # the Trainer alone would load checkpoint-2 into it non-strictly
    with pytest.raises(ResumeMismatchError, match=r"student\.parameters\.\S+\.2\.\S+: '\(absent\)' vs \["):
        resume(student=deeper)
    with pytest.raises(ResumeMismatchError, match=r"method\.feature_loss_weight: 2\.0 vs 1\.0"):
        resume(feature_loss_weight=1.0)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    resume()  # the same run resumes


# -- 5: bytes overwritten at the same size ---------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["zeros", "random"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_5_checkpoint_bytes_overwritten_at_the_same_size_fail_their_checksum(tmp_path, caplog, damage, name):
    _checkpointed_run(tmp_path)
    path = tmp_path / "checkpoint-2" / name
    size = path.stat().st_size
    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(size) if damage == "zeros" else noise)
    assert path.stat().st_size == size
    message = rf"{path} does not match the checksum.*Resume from {tmp_path / 'checkpoint-1'}"
    with pytest.raises(IncompleteCheckpointError, match=message):
        _trainer(tmp_path, teacher_check="off", max_steps=3).train(resume_from_checkpoint=str(path.parent))
    with caplog.at_level(logging.WARNING):  # "the newest intact one": checkpoint-1, and a word about checkpoint-2
        trainer = _trainer(tmp_path, teacher_check="off", max_steps=3)
        trainer.train(resume_from_checkpoint=True)
    assert f"Skipping the incomplete checkpoint checkpoint-2: {path} does not match the checksum" in _warnings(caplog)
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3]


# -- 6: no non-finite weights saved without an explicit opt-in ---------------------------------------------------------
def test_6_save_model_after_a_non_finite_loss_is_refused_unless_asked(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4, teacher_check="off")
    real_forward = trainer.teacher_forward

    def diverging_teacher(pixels: torch.Tensor) -> ModelFeatures:
        out = real_forward(pixels)
        if trainer.state.global_step >= 1:
            out.features = torch.full_like(out.features, float("nan"))
        return out

    trainer.teacher_forward = diverging_teacher
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    out = tmp_path / "student"
    with pytest.raises(FloatingPointError, match=r"NaN/inf weights .*stopped with a NaN/inf loss.*allow_non_finite"):
        trainer.save_model(str(out))
    assert not (out / "model.safetensors").exists()
    trainer.save_model(str(out), allow_non_finite=True)  # the explicit opt-in, e.g. to inspect the weights
    assert (out / "model.safetensors").is_file()


# -- 7: one run per output_dir ---------------------------------------------------------------------------------------
def _lock_holder(output_dir: Path) -> subprocess.Popen:
    """Another process holding the run lock of ``output_dir`` (the checkpointing module alone: a fast start)."""
    code = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(ROOT / 'hf_projkd' / 'checkpointing.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "lock = module.RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(output_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_7_a_second_run_in_the_same_output_dir_is_refused_and_a_crashed_runs_lock_is_not_stuck(tmp_path):
    holder = _lock_holder(tmp_path)
    try:
        message = rf"in use by another run \(pid {holder.pid} .*another output_dir"
        with pytest.raises(OutputDirInUseError, match=message):
            _trainer(tmp_path, teacher_check="off", save_strategy="steps", save_steps=1).train()
        assert not list(tmp_path.glob("checkpoint-*"))
    finally:
        holder.kill()  # a crash: the process dies holding the lock
        holder.wait()
    _checkpointed_run(tmp_path)  # the lock died with its process
    _trainer(tmp_path, teacher_check="off", max_steps=3).train(resume_from_checkpoint=True)  # and was released


# -- 8: teacher inputs -------------------------------------------------------------------------------------------------
def test_8_a_student_that_declares_no_normalisation_warns_and_the_teacher_check_finds_the_data_s(tmp_path, caplog):
    data = brightness_dataset(40, HALF)  # normalised with mean/std 0.5; the student does not say so
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tmp_path, teacher=BrightnessTeacher(), dataset=data, max_steps=1)
    assert "student's input normalisation is unknown" in _warnings(caplog)
    assert "expects mean/std ((0.2, 0.3, 0.4), (0.3, 0.2, 0.25))" in _warnings(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.teacher_check_result.better == ["mean/std 0.5"]
    assert "if the inputs were converted from mean/std 0.5" in _warnings(caplog)


def test_8_a_random_init_timm_students_assumed_normalisation_is_tested_by_the_teacher_check(tmp_path, caplog):
    """timm records its default weights' mean/std even for a random-init model: the trainer converts from them,
    and the teacher check tells when the data is normalised otherwise."""
    data = brightness_dataset(40, HALF)
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path, student=tiny_timm_resnet(), teacher=BrightnessTeacher(), dataset=data, max_steps=1).train()
    assert "if the inputs were converted from mean/std 0.5: the data is probably normalised that way" in _warnings(
        caplog)
    with pytest.raises(TeacherCheckError, match=r"converted from mean/std 0\.5.*processing_class"):
        _trainer(tmp_path / "strict", student=tiny_timm_resnet(), teacher=BrightnessTeacher(), dataset=data,
                 teacher_check="error").train()
    assert not (tmp_path / "strict" / "checkpoint-1").exists()
    declared = declaring(tiny_vit(), HALF)  # the same data, declared: converted right, nothing to report
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tmp_path / "ok", student=declared, teacher=BrightnessTeacher(), dataset=data, max_steps=1)
        trainer.train()
    assert trainer.teacher_check_result.top1 == 1.0 and "Teacher check" not in _warnings(caplog)


# -- 9: labels in another order than the teacher's classes -------------------------------------------------------------
@pytest.mark.parametrize("names", ["LABEL_i", "copied from the teacher"])
def test_9_permuted_labels_are_reported_by_the_teacher_check(tmp_path, caplog, names):
    student = declaring(tiny_vit(), HALF)
    teacher = BrightnessTeacher(names=CLASSES if names != "LABEL_i" else None)
    if names != "LABEL_i":
        student.config.id2label = dict(enumerate(CLASSES))
        student.config.label2id = {c: i for i, c in enumerate(CLASSES)}
    data = brightness_dataset(40, HALF, permutation=[1, 2, 3, 4, 0])
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(tmp_path, student=student, teacher=teacher, dataset=data, max_steps=1)
        trainer.train()
    assert trainer.teacher_check_result.relabelled_top1 == 1.0
    assert "labels are probably in another order than the teacher's classes" in _warnings(caplog)


def test_9_class_names_that_differ_only_in_case_or_separators_are_the_same_classes(tmp_path):
    student = tiny_vit()
    student.config.id2label = dict(enumerate(["Ant", "bee", "Cat", "DOG", "golden_retriever"]))
    teacher = tiny_vit(seed=3)
    teacher.config.id2label = dict(enumerate(["ant", "Bee", "cat", "dog", "Golden Retriever"]))
    _trainer(tmp_path, student=student, teacher=teacher)  # not refused
    teacher.config.id2label = dict(enumerate(["ant", "Bee", "cat", "dog", "labrador"]))
    with pytest.raises(ValueError, match="class names differ"):
        _trainer(tmp_path, student=student, teacher=teacher)


# -- 11: recipe defaults ---------------------------------------------------------------------------------------------
def test_11_imagenet_recipe_defaults_fit_the_machine(tmp_path, monkeypatch):
    import deit_tiny
    import imagenet

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cores, workers in ((2, 1), (1, 0), (64, 10)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        _, _, args = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, ["--output_dir", str(tmp_path)])
        assert args.dataloader_num_workers == workers and args.dataloader_persistent_workers == (workers > 0)
        assert args.bf16 is False and args.teacher_dtype == "auto"  # deit.yaml's bf16 needs a bf16 machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert imagenet.machine_defaults()["bf16"] is True  # a machine with bf16 gets deit.yaml's bf16


def test_11_an_explicit_learning_rate_is_used_as_given(tmp_path):
    import deit_tiny
    import imagenet

    argv = ["--output_dir", str(tmp_path), "--per_device_train_batch_size", "8", "--use_cpu", "true"]
    recipe, _, args = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--learning_rate", "0.01"])
    imagenet.configure_schedule(args, recipe, 1000, streaming=False)
    assert args.learning_rate == 0.01
    recipe, _, args = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, argv)
    imagenet.configure_schedule(args, recipe, 1000, streaming=False)
    assert args.learning_rate == pytest.approx(5e-4 * 8 / 512)  # the base-lr rule when no lr is given
    with pytest.raises(ValueError, match="either --learning_rate .* or --base_learning_rate"):
        imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--learning_rate", "0.01", "--base_learning_rate",
                                                          "0.001"])


# -- 12: bad inputs that gave tracebacks or misleading messages -------------------------------------------------------
def test_12_string_labels_are_refused_with_the_encoding_fix(tmp_path):
    data = Dataset.from_dict({"pixel_values": torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE).numpy(),
                              "label": ["cat", "dog"] * 8}).with_format("torch")
    with pytest.raises(ValueError, match=r"'label' column holds strings \('cat', \.\.\.\).*class_encode_column"):
        _trainer(tmp_path, dataset=data)


BAD_PIXELS = {
    "uint8 pixels": (lambda x: (x * 40 + 128).clamp(0, 255).to(torch.uint8), r"are torch\.u?int\S*, expected normalised"
                     r" floats: convert the images"),
    "1-channel images": (lambda x: x[:, :1], r"have 1 channels .* expects 3\. Grey images: convert them to RGB"),
    "HWC layout": (lambda x: x.permute(0, 2, 3, 1), r"looks like \(batch, height, width, channels\): permute"),
}


@pytest.mark.parametrize("case", sorted(BAD_PIXELS))
@pytest.mark.parametrize("teacher_check", ["warn", "off"])
def test_12_bad_pixel_values_are_named_in_training_and_in_the_teacher_check(tmp_path, case, teacher_check):
    """The teacher check runs first: it must report the batch problem, not a teacher failure with the wrong fix."""
    convert, message = BAD_PIXELS[case]
    images = convert(torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE))
    data = Dataset.from_dict({"pixel_values": images.numpy(), "labels": [0, 1] * 8}).with_format("torch")
    with pytest.raises((TypeError, ValueError), match=message):
        _trainer(tmp_path, dataset=data, teacher_check=teacher_check).train()


def test_12_images_of_different_sizes_in_one_batch_are_named_with_the_fix(tmp_path):
    images = [torch.randn(3, IMAGE_SIZE, IMAGE_SIZE).numpy()] * 12 + [torch.randn(3, 28, 28).numpy()] * 4
    data = Dataset.from_dict({"pixel_values": images, "labels": [0] * 16}).with_format("torch")
    with pytest.raises(ValueError, match=r"different shapes \[\(3, 28, 28\), \(3, 32, 32\)\].*Resize"):
        _trainer(tmp_path, dataset=data, teacher_check="off", train_sampling_strategy="sequential",
                 max_steps=2).train()


@pytest.mark.parametrize("damage", ["truncated", "corrupt header"])
def test_12_a_damaged_teacher_safetensors_file_is_named(tmp_path, damage):
    folder = tmp_path / "teacher"
    adapter_for(tiny_timm_resnet()).save(folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 8 + data[8:])
    with pytest.raises(OSError, match=rf"{path} is truncated or corrupt.*Re-save or re-download"):
        load_image_classifier(str(folder))
    single = tmp_path / "cifar_resnet.safetensors"
    single.write_bytes(path.read_bytes())
    with pytest.raises(OSError, match=rf"{single} is truncated or corrupt"):
        load_image_classifier(str(single))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_12_a_half_precision_teacher_runs_beside_an_fp32_student(tmp_path, dtype):
    trainer = _trainer(tmp_path, teacher=tiny_timm_vit().to(dtype), teacher_check="off")
    batch = {"pixel_values": torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE), "labels": torch.tensor([0, 1, 2, 3])}
    loss = trainer.compute_loss(trainer.model.train(), batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("name, damage", [("trainer_state.json", b"{broken"), ("rng_state.pth", None),
                                          ("scheduler.pt", None)])
def test_12_a_broken_state_file_accepted_by_hand_is_named_before_the_trainer_reads_it(tmp_path, name, damage):
    _checkpointed_run(tmp_path)
    folder = tmp_path / "checkpoint-2"
    path = folder / name
    original = path.read_bytes()
    path.write_bytes(damage if damage is not None else original[: len(original) // 2])
    mark_checkpoint_complete(folder)  # accepted by hand: the checksums now agree with the damaged bytes
    message = rf"Cannot resume from {folder}: {path} is truncated or corrupt .*Resume from {tmp_path / 'checkpoint-1'}"
    with pytest.raises(OSError, match=message):
        _trainer(tmp_path, teacher_check="off", max_steps=3).train(resume_from_checkpoint=str(folder))


def test_12_max_train_samples_0_is_an_error_in_both_recipe_families(tmp_path):
    import cifar
    import deit_tiny
    import imagenet

    with pytest.raises(ValueError, match=r"--max_train_samples must be >= 1 \(or left unset\), got 0"):
        cifar.parse(["--max_train_samples", "0", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--max_train_samples must be >= 1 \(or left unset for the whole split\)"):
        imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, ["--max_train_samples", "0", "--output_dir", str(tmp_path)])


def test_12_a_nan_image_makes_eval_loss_nan_and_is_counted_not_dropped(tmp_path, caplog):
    data = random_image_dataset(16).to_dict()
    pixels = np.asarray(data["pixel_values"], dtype=np.float32)
    pixels[5] = np.nan
    evaluation = Dataset.from_dict({"pixel_values": pixels, "labels": data["labels"]}).with_format("torch")
    args = make_args(tmp_path, eval_teacher_metrics=False, per_device_eval_batch_size=8)  # a NaN and a clean batch
    trainer = DistillationTrainer(tiny_vit(), tiny_timm_vit(), args, eval_dataset=evaluation)
    with caplog.at_level(logging.WARNING):
        metrics = trainer.evaluate()
    assert np.isnan(metrics["eval_loss"]) and metrics["eval_nonfinite_logits"] == 1
    assert "1 of 16 evaluation samples have NaN/inf student logits" in _warnings(caplog)


def test_12_fp16_on_a_cpu_and_zero_epochs_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"fp16=True needs a GPU.*silently train in fp32.*bf16=True"):
        _trainer(tmp_path, fp16=True)
    trainer = _trainer(tmp_path, max_steps=-1, num_train_epochs=0)
    with pytest.raises(ValueError, match=r"num_train_epochs=0 and no max_steps: nothing would be trained"):
        trainer.train()
    assert not list(tmp_path.iterdir())


def test_12_a_missing_local_teacher_folder_is_reported_before_the_hub_s_words(tmp_path):
    with pytest.raises(OSError) as raised:
        load_image_classifier("teachers/resnet32x4")
    message = str(raised.value)
    assert message.startswith("Could not load the model 'teachers/resnet32x4'. There is no local folder")
    assert message.index("HF_HUB_OFFLINE is set") < message.index("As a Hub id it failed with")


# -- 13: no persistent workers without workers -----------------------------------------------------------------------
def test_13_dataloader_num_workers_0_turns_persistent_workers_off(tmp_path, monkeypatch):
    import deit_tiny
    import imagenet

    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # the machine default would be 10 persistent workers
    _, _, args = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, ["--output_dir", str(tmp_path), "--use_cpu", "true",
                                                                   "--dataloader_num_workers", "0", "--eval_strategy",
                                                                   "no", "--per_device_train_batch_size", "8"])
    assert args.dataloader_num_workers == 0 and args.dataloader_persistent_workers is False
    args.teacher_check, args.mixup_alpha, args.cutmix_alpha, args.repeated_augmentation = "off", 0.0, 0.0, 1
    trainer = DistillationTrainer(tiny_vit(), tiny_timm_vit(), args, train_dataset=random_image_dataset(16))
    assert len(list(trainer.get_train_dataloader())) == 2  # torch refuses persistent workers without workers


# -- 14: what a saved or loaded timm model says about itself -----------------------------------------------------------
def test_14_a_saved_timm_student_keeps_its_class_names_and_drops_the_default_weights_metadata(tmp_path):
    student = create_student("timm:resnet10t", CLASSES, IMAGE_SIZE)
    assert student.pretrained_cfg.get("hf_hub_id")  # the architecture's default weights, not this model
    trainer = DistillationTrainer(student, None, make_args(tmp_path, logit_loss="none", feature_loss_weight=0.0))
    trainer.save_model(str(tmp_path / "student"))
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["label_names"] == CLASSES and config["pretrained_cfg"]["label_names"] == CLASSES
    assert not {"hf_hub_id", "tag", "license", "paper_ids"} & set(config["pretrained_cfg"])
    reloaded = load_image_classifier(str(tmp_path / "student"))
    assert adapter_for(reloaded).label_names() == CLASSES  # timm's label_names are read back


def test_14_a_local_timm_teacher_saved_as_pytorch_model_bin_loads(tmp_path):
    from timm.models import save_for_hf

    teacher = tiny_timm_resnet().eval()
    save_for_hf(teacher, str(tmp_path), safe_serialization=False, model_config={"label_names": CLASSES})
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = load_image_classifier(str(tmp_path)).eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(loaded(x), teacher(x))
    assert adapter_for(loaded).label_names() == CLASSES


# -- 1: the ImageNet recipes resume too ------------------------------------------------------------------------------
@pytest.fixture
def tiny_image_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=CLASSES)})
    for split, n in (("train", 8), ("validation", 5)):
        images = [Image.fromarray(rng.integers(0, 255, (36, 36, 3)).astype("uint8")) for _ in range(n)]
        root.mkdir(exist_ok=True)
        Dataset.from_dict({"image": images, "label": [i % 5 for i in range(n)]}, features=features).to_parquet(
            str(root / f"{split}-00000-of-00001.parquet"))
    return root


def test_1_the_imagenet_recipe_resumes_and_never_restarts_over_checkpoints(tmp_path, tiny_image_folder):
    import imagenet
    import imagenet_resnet18

    out = tmp_path / "run"

    def run(*extra: str):
        argv = ["--dataset_name", str(tiny_image_folder), "--output_dir", str(out), "--method", "ce",
                "--student", "resnet10t", "--eval_teacher_metrics", "false", "--input_size", "32",
                "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--use_cpu", "true",
                "--bf16", "false", "--dataloader_num_workers", "0", "--eval_strategy", "no", "--save_strategy",
                "steps", "--save_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
                *extra]
        return imagenet.run("imagenet_resnet18.yaml", imagenet_resnet18.DEFAULTS, argv)[0]

    run("--max_steps", "2")
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        run("--max_steps", "2")
    trainer = run("--max_steps", "3", "--resume_from_checkpoint", "true")
    steps = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == 3 and steps == [1, 2, 3]  # 1 and 2 from checkpoint-2, then 3



# -- found by benchmarks/bad_inputs_probe.py ---------------------------------------------------------------------------
def test_label_free_distillation_skips_the_teacher_check_instead_of_failing(tmp_path):
    data = random_image_dataset(16).remove_columns("labels")
    trainer = _trainer(tmp_path, dataset=data, ce_weight=0.0, teacher_check="warn")
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.teacher_check_result is None


def test_a_teacher_nothing_uses_is_not_loaded(tmp_path):
    args = make_args(tmp_path, logit_loss="none", feature_loss_weight=0.0, eval_teacher_metrics=False,
                     teacher_model_name_or_path="nowhere/no-teacher")
    assert DistillationTrainer(tiny_vit(), None, args).teacher is None
    args.eval_teacher_metrics = True  # the teacher metrics would use it: loaded, and its failure is named
    with pytest.raises(OSError, match="Could not load the model 'nowhere/no-teacher'"):
        DistillationTrainer(tiny_vit(), None, args)


def _png(size: int, truncate: bool = False) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return {"bytes": data[:40] if truncate else data, "path": None}


def test_an_undecodable_image_is_named_with_the_fix(tmp_path):
    from hf_projkd.data import decode_image_dataset
    from hf_projkd.data.imagenet import ImageNetDataArguments, load_imagenet

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a"])})
    data = Dataset.from_dict({"image": [_png(32), _png(32, truncate=True)], "label": [0, 0]}, features=features)
    with pytest.raises(ValueError, match=r"image at row 1 cannot be decoded .*expected an image PIL can read.*Remove"):
        decode_image_dataset(data, "image", "label")
    for split in ("train", "validation"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((36, 36, 3), dtype=np.uint8)).save(tmp_path / split / name / "0.png")
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    train = load_imagenet(ImageNetDataArguments(dataset_name=str(tmp_path), input_size=32)).train
    with pytest.raises(ValueError, match=r"cannot be decoded .*1\.png"):
        [train[i] for i in range(len(train))]


@pytest.mark.parametrize("field, value, message", [
    ("interpolation", "cubic", r"--interpolation 'cubic' is not supported: expected one of \('bicubic'"),
    ("remode", "zeros", r"--remode 'zeros' is not supported: expected one of \('pixel'"),
    ("train_scale_min", 1.5, r"--train_scale_min must be in \(0, 1\].*got 1\.5"),
    ("image_mean", [0.5, 0.5], r"--image_mean needs 3 values .*got \[0\.5, 0\.5\]"),
    ("image_std", [0.2, 0.0, 0.2], r"--image_std needs 3 values \(one per RGB channel, each > 0\)"),
])
def test_imagenet_data_arguments_are_validated_before_any_data_is_read(field, value, message):
    from hf_projkd.data.imagenet import ImageNetDataArguments

    with pytest.raises(ValueError, match=message):
        ImageNetDataArguments(**{field: value})


def test_an_unknown_augmentation_policy_names_the_flag_and_the_valid_forms():
    from hf_projkd.data.imagenet import ImageNetDataArguments, build_train_transform

    with pytest.raises(ValueError, match=r"--auto_augment 'bogus' is not a timm .*'rand-m9-mstd0\.5-inc1'.*'none'"):
        build_train_transform(ImageNetDataArguments(input_size=32, auto_augment="bogus"))


def test_an_output_dir_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    notes = tmp_path / "run"
    notes.write_text("notes")
    with pytest.raises(NotADirectoryError, match=r"output_dir .*run is a file: expected a folder.*another output_dir"):
        _trainer(notes)
    assert notes.read_text() == "notes"


def test_evaluate_without_evaluation_data_says_where_to_pass_it(tmp_path):
    with pytest.raises(ValueError, match=r"evaluate\(\) needs evaluation data.*eval_dataset=\.\.\."):
        _trainer(tmp_path).evaluate()


def test_parquet_splits_that_name_the_classes_in_another_order_are_refused(tmp_path):
    """datasets reads every split with the first file's ClassLabel names: the test split's labels would silently
    mean other classes."""
    from hf_projkd.data import load_image_dataset

    for split, names in (("train", ["cat", "dog", "eel"]), ("test", ["dog", "cat", "eel"])):
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
        Dataset.from_dict({"image": [_png(8)] * 3, "label": [0, 1, 2]}, features=features).to_parquet(
            str(tmp_path / f"{split}-0.parquet"))
    with pytest.raises(ValueError, match=r"differently: .*\(0, 'cat', 'dog'\), \(1, 'dog', 'cat'\).*Re-export"):
        load_image_dataset(str(tmp_path))
    (tmp_path / "test-0.parquet").unlink()
    Dataset.from_dict({"image": [_png(8)] * 3, "label": [0, 1, 2]}, features=Features(
        {"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog", "eel"])})).to_parquet(
        str(tmp_path / "test-0.parquet"))
    assert load_image_dataset(str(tmp_path))["test"].features["label"].names == ["cat", "dog", "eel"]


def test_a_config_json_that_is_not_json_is_named(tmp_path):
    adapter_for(tiny_timm_resnet()).save(tmp_path)
    (tmp_path / "config.json").write_text("{'architecture': resnet10t")
    with pytest.raises(OSError, match=r"config\.json is not valid JSON .*expected the config\.json that save_pre"):
        load_image_classifier(str(tmp_path))


@pytest.mark.parametrize("values, fix", [
    ({"temperature": 0.0}, "Set a positive value"),
    ({"lr_decay_at": "late"}, r"e\.g\. 0\.5,0\.75"),
    ({"mixup_prob": 1.5}, "Set a probability"),
    ({"label_smoothing_factor": 1.0}, r"0\.1 is usual"),
    ({"repeated_augmentation": 0}, "1 turns it off"),
    ({"teacher_check_samples": 0}, "teacher_check='off'"),
    ({"student_feature_dim": 0}, "leave it unset"),
])
def test_argument_errors_say_how_to_fix_them(tmp_path, values, fix):
    from hf_projkd import DistillationArguments

    with pytest.raises(ValueError, match=fix):
        DistillationArguments(output_dir=str(tmp_path), **values)


@pytest.mark.parametrize("batch, message", [
    ({"pixel_values": torch.randn(24, 32, 32), "labels": torch.zeros(8).long()}, r"torch\.stack \(not torch\.cat\)"),
    ({"pixel_values": torch.randn(8, 3, 32, 32), "labels": [0] * 8}, r"return torch\.tensor\(labels\)"),
    ({"pixel_values": torch.randn(8, 3, 32, 32), "labels": torch.zeros(8)}, r"labels\.long\(\)"),
    ({"pixel_values": torch.randn(8, 3, 32, 32), "labels": torch.zeros(7).long()}, r"expected one label per image"),
])
def test_batch_errors_say_how_to_fix_them(batch, message):
    from hf_projkd.validation import check_batch

    with pytest.raises((TypeError, ValueError), match=message):
        check_batch(batch, 3, needs_labels=True)


def test_a_misspelt_flag_gets_a_suggestion_and_a_broken_config_the_fix(tmp_path, capsys):
    import cifar

    with pytest.raises(SystemExit):
        cifar.parse(["--lerning_rate", "0.1", "--output_dir", str(tmp_path)])
    assert "unrecognized arguments: --lerning_rate 0.1 (did you mean --learning_rate" in capsys.readouterr().err
    broken = tmp_path / "run.yaml"
    broken.write_text("method: [kd\n")
    with pytest.raises(ValueError, match=r"(?s)run\.yaml is not valid YAML: .*fix the line the parser names"):
        cifar.parse(["--config", str(broken), "--output_dir", str(tmp_path)])
