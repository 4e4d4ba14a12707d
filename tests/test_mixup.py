"""Mixup / CutMix collator and the soft-target cross-entropy: shapes and exact values."""

import pytest
import torch
import torch.nn.functional as F

from hf_projkd.data.mixup import MixupCollator, collate_images, cutmix_box, smooth_one_hot
from hf_projkd.losses import classification_loss


def _constant_images(values: list[float], size: int = 8) -> torch.Tensor:
    """One constant image per value, so every pixel says which sample it came from."""
    return torch.stack([torch.full((3, size, size), v) for v in values])


def test_smooth_one_hot_values():
    targets = smooth_one_hot(torch.tensor([0, 2]), num_classes=4, smoothing=0.1)
    expected = torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]])
    torch.testing.assert_close(targets, expected)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        smooth_one_hot(torch.tensor([0, -1]), num_classes=4)


def test_mixup_blends_images_and_targets_with_the_reversed_batch():
    collator = MixupCollator(num_classes=3, label_smoothing=0.0)
    images, labels = _constant_images([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 1, 2, 0])
    mixed, targets = collator.apply(images, labels, "mixup", 0.3)
    torch.testing.assert_close(mixed[:, 0, 0, 0], torch.tensor([0.3 * 1 + 0.7 * 4, 0.3 * 2 + 0.7 * 3,
                                                               0.3 * 3 + 0.7 * 2, 0.3 * 4 + 0.7 * 1]))
    torch.testing.assert_close(targets[0], torch.tensor([1.0, 0.0, 0.0]))  # partner has the same class 0
    torch.testing.assert_close(targets[1], torch.tensor([0.0, 0.3, 0.7]))
    torch.testing.assert_close(targets.sum(-1), torch.ones(4))


def test_cutmix_pastes_a_box_and_weights_targets_by_its_actual_area():
    torch.manual_seed(3)
    collator = MixupCollator(num_classes=2, label_smoothing=0.1)
    images, labels = _constant_images([0.0, 1.0], size=16), torch.tensor([0, 1])
    mixed, targets = collator.apply(images, labels, "cutmix", 0.6)
    pasted = (mixed[0, 0] == 1.0).float().mean().item()  # share of sample 0 taken from sample 1
    assert 0.0 < pasted < 1.0
    torch.testing.assert_close(mixed[1, 0] == 0.0, mixed[0, 0] == 1.0)  # the same box, the other way round
    smooth = smooth_one_hot(labels, 2, 0.1)
    torch.testing.assert_close(targets[0], (1 - pasted) * smooth[0] + pasted * smooth[1])
    y0, y1, x0, x1 = cutmix_box(16, 16, 1.0)
    assert (y1 - y0) * (x1 - x0) == 0  # lam = 1: nothing to paste


def test_sampling_modes_and_collator_shapes():
    torch.manual_seed(0)
    examples = [{"pixel_values": torch.rand(3, 8, 8), "labels": i % 5} for i in range(6)]
    only_mixup = MixupCollator(num_classes=5, mixup_alpha=0.8, cutmix_alpha=0.0)
    assert {only_mixup.sample()[0] for _ in range(20)} == {"mixup"}
    always_cutmix = MixupCollator(num_classes=5, switch_prob=1.0)
    assert {always_cutmix.sample()[0] for _ in range(20)} == {"cutmix"}
    never = MixupCollator(num_classes=5, prob=0.0, label_smoothing=0.1)
    batch = never(examples)
    torch.testing.assert_close(batch["pixel_values"], collate_images(examples)["pixel_values"])
    torch.testing.assert_close(batch["labels"], smooth_one_hot(torch.arange(6) % 5, 5, 0.1))
    lams = [only_mixup.sample()[1] for _ in range(200)]
    assert all(0.0 < lam < 1.0 for lam in lams) and abs(sum(lams) / len(lams) - 0.5) < 0.08  # Beta(a, a): mean 1/2
    batch = MixupCollator(num_classes=5)(examples)
    assert batch["pixel_values"].shape == (6, 3, 8, 8) and batch["labels"].shape == (6, 5)
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupCollator(num_classes=5, mixup_alpha=-1.0)


def test_soft_target_cross_entropy_matches_label_smoothing_and_is_linear_in_the_mix():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 6), torch.tensor([0, 5, 2, 2])
    smoothed = smooth_one_hot(labels, 6, 0.1)
    torch.testing.assert_close(classification_loss(logits, smoothed), F.cross_entropy(logits, labels,
                                                                                       label_smoothing=0.1))
    other = smooth_one_hot(labels.flip(0), 6, 0.1)
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
