"""Mixup / CutMix on the device (timm's ``Mixup`` inside ``DistillationTrainer``), soft-target cross-entropy, and
DeiT's repeated-augmentation sampler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_args, random_image_dataset, tiny_timm_vit, tiny_vit

from hf_projkd import DistillationTrainer
from hf_projkd.losses import classification_loss
from hf_projkd.trainer import _build_mixup, _mix


def _smooth(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    return F.one_hot(labels, classes).float() * (1 - smoothing) + smoothing / classes


def test_mixup_blends_student_and_teacher_images_alike_and_mixes_smoothed_targets(tmp_path):
    args = make_args(tmp_path, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing_factor=0.1)
    mixup = _build_mixup(args, num_classes=5)
    pixels, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    teacher = pixels * 2 + 1  # another normalisation of the same images
    np.random.seed(0)
    mixed, mixed_teacher, targets = _mix(mixup, pixels, teacher, labels)
    lam = float((mixed[0] - pixels[5])[0, 0, 0] / (pixels[0] - pixels[5])[0, 0, 0])  # partner: the reversed batch
    torch.testing.assert_close(mixed, lam * pixels + (1 - lam) * pixels.flip(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed_teacher, mixed * 2 + 1, atol=1e-5, rtol=1e-5)  # the same lam for the teacher
    smooth = _smooth(labels, 5, 0.1)
    torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets.sum(-1), torch.ones(6))


def test_cutmix_pastes_one_box_into_student_and_teacher_images_and_weights_targets_by_its_area(tmp_path):
    mixup = _build_mixup(make_args(tmp_path, mixup_alpha=0.0, cutmix_alpha=1.0), num_classes=5)
    pixels, labels = torch.arange(4.0)[:, None, None, None].expand(4, 3, 16, 16).clone(), torch.arange(4)
    np.random.seed(3)
    mixed, mixed_teacher, targets = _mix(mixup, pixels, pixels + 10, labels)
    pasted = mixed[0, 0] == 3.0  # image 0 got a box of its partner, image 3
    area = pasted.float().mean().item()
    assert 0 < area < 1 and torch.equal(mixed_teacher[0, 0] == 13.0, pasted)  # the same box
    torch.testing.assert_close(targets[0], torch.tensor([1 - area, 0, 0, area, 0]))


def test_mixup_acts_on_training_batches_only_and_needs_an_even_batch(tmp_path):
    data = random_image_dataset(16)
    trainer = DistillationTrainer(tiny_vit(), tiny_timm_vit(), make_args(tmp_path, mixup_alpha=0.8,
                                                                        teacher_check="off"), train_dataset=data,
                                  eval_dataset=data)
    seen = []
    forward = trainer.teacher_forward
    trainer.teacher_forward = lambda pixels: seen.append(pixels.clone()) or forward(pixels)
    batch = {"pixel_values": data[:6]["pixel_values"], "labels": data[:6]["labels"]}
    np.random.seed(0)
    trainer.compute_loss(trainer.model.train(), dict(batch))
    assert not torch.allclose(seen[-1], batch["pixel_values"])  # the teacher saw mixed images
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch))  # evaluation: plain images, hard labels
    with torch.no_grad():
        expected = F.cross_entropy(trainer.student(batch["pixel_values"]).logits, batch["labels"])
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="needs an even batch"):
        trainer.compute_loss(trainer.model.train(), {k: v[:5] for k, v in batch.items()})


def test_soft_target_cross_entropy_matches_label_smoothing_and_is_linear_in_the_mix():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 6), torch.tensor([0, 5, 2, 2])
    smoothed = _smooth(labels, 6, 0.1)
    torch.testing.assert_close(classification_loss(logits, smoothed), F.cross_entropy(logits, labels,
                                                                                       label_smoothing=0.1))
    other = _smooth(labels.flip(0), 6, 0.1)
    mixed = 0.25 * smoothed + 0.75 * other
    torch.testing.assert_close(classification_loss(logits, mixed),
                               0.25 * classification_loss(logits, smoothed) + 0.75 * classification_loss(logits, other))
    logits.requires_grad_(True)
    classification_loss(logits, mixed).backward()
    torch.testing.assert_close(logits.grad, (logits.softmax(-1) - mixed).detach() / 4)


def test_repeated_augmentation_sampler_spreads_copies_over_processes_as_accelerate_shards_them():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    from hf_projkd.data.imagenet import RepeatedAugmentationSampler

    single = list(RepeatedAugmentationSampler(12, batch_size=4, num_processes=1, repeats=3, seed=0))
    assert len(single) == 12 and len(set(single)) == 4  # an epoch of N draws N / 3 images, 3 times each
    assert all(single[i] == single[i + 1] == single[i + 2] for i in range(0, 12, 3))

    sampler = RepeatedAugmentationSampler(24, batch_size=2, num_processes=2, repeats=3, seed=0)
    sampler.set_epoch(5)
    shards = [list(BatchSamplerShard(BatchSampler(sampler, 2, drop_last=False), num_processes=2, process_index=p))
              for p in range(2)]
    order = torch.randperm(24, generator=torch.Generator().manual_seed(5)).repeat_interleave(3)
    for process, batches in enumerate(shards):  # what each process sees is DeiT's deal: positions p, p + 2, ...
        assert [i for batch in batches for i in batch] == order[process::2][:12].tolist()
    assert all(set(a) & set(b) for a, b in zip(*shards, strict=True))  # copies of an image meet in the same step
    assert list(sampler) == list(sampler)  # every process builds the same order for an epoch
    sampler.set_epoch(6)
    assert list(sampler) != [i for batches in zip(*shards, strict=True) for batch in batches for i in batch]
    with pytest.raises(ValueError, match="full batch"):
        RepeatedAugmentationSampler(3, batch_size=4)
