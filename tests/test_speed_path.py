"""The step path that a GPU needs (issue 11), checked on the CPU: no host read-back in a non-logging step, and the
CIFAR on-device data path giving exactly the losses of the default path."""

from __future__ import annotations

from pathlib import Path

import cifar
import torch
from conftest import make_args, random_image_dataset, tiny_timm_vit, tiny_vit
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from hf_projkd import DistillationTrainer
from hf_projkd.data.cifar import DecodedImages, DecodedSplits
from hf_projkd.models import CIFAR10_CLASSES, create_cifar_model

SYNC = "aten::_local_scalar_dense"  # what .item(), bool(tensor), .tolist() ... run: a device->host read


class SyncCounter(TrainerCallback):
    """Counts host read-backs between one optimizer step and the next: scheduler, zero_grad, the step's callbacks and
    log/save decisions, fetching and collating the next batch, forward, backward, gradient clipping.

    The optimizer step itself is left out: on the CPU, fused AdamW reads its scalar step count on the host, which on
    a GPU stays on the device (no sync there), so counting it here would measure the CPU kernel, not the library.
    """

    def __init__(self) -> None:
        self.counts: list[int] = []
        self._profile: profile | None = None

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        if state.global_step >= 1:  # from the second step on: the first one initialises lazily
            self._profile = profile(activities=[ProfilerActivity.CPU])
            self._profile.__enter__()

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        if self._profile is not None:
            self._profile.__exit__(None, None, None)
            self.counts.append(sum(event.name == SYNC for event in self._profile.events()))
            self._profile = None

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._profile is not None:  # the last step's profiler: no later step closes it (left open, it crashes
            self._profile.__exit__(None, None, None)  # the interpreter at exit)
            self._profile = None


def test_a_non_logging_srd_step_reads_nothing_back_from_the_device(tmp_path):
    counter = SyncCounter()
    args = make_args(tmp_path, max_steps=5, logging_steps=100, teacher_check="off")  # default loss and optimizer
    assert args.method == "srd+kd" and args.max_grad_norm > 0
    trainer = DistillationTrainer(tiny_vit(), tiny_timm_vit(), args, train_dataset=random_image_dataset(48),
                                  callbacks=[counter])
    trainer.train()
    assert len(counter.counts) == 3 and counter.counts == [0, 0, 0], counter.counts
    # the same count catches a read-back: the Trainer's own NaN filter reads the loss every step
    noisy = SyncCounter()
    DistillationTrainer(tiny_vit(), tiny_timm_vit(), make_args(tmp_path / "filter", max_steps=4, logging_steps=100,
                                                               teacher_check="off", logging_nan_inf_filter=True),
                        train_dataset=random_image_dataset(48), callbacks=[noisy]).train()
    assert all(count >= 1 for count in noisy.counts), noisy.counts


def _synthetic_cifar(train: int = 96, evaluation: int = 32) -> DecodedSplits:
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> DecodedImages:
        return DecodedImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                             torch.randint(0, 10, (n,), generator=g))

    return DecodedSplits(images(train), images(evaluation), list(CIFAR10_CLASSES))


def _cifar_run(tmp_path: Path, on_device: bool, data: DecodedSplits, teacher: Path,
               counter: SyncCounter | None = None) -> DistillationTrainer:
    recipe, args = cifar.parse([
        "--method", "srd+kd", "--student", "resnet8", "--teacher", str(teacher), "--max_steps", "5",
        "--per_device_train_batch_size", "16", "--logging_steps", "1", "--use_cpu", "true", "--save_strategy", "no",
        "--output_dir", str(tmp_path / f"run_{on_device}"), "--data_on_device", str(on_device).lower(),
        "--disable_tqdm", "true", "--teacher_check", "off",
    ])
    trainer = cifar.build_trainer(recipe, args, data)
    if counter is not None:
        trainer.add_callback(counter)
        trainer.args.logging_steps = 100
    trainer.train()
    return trainer


def test_the_on_device_cifar_path_gives_the_losses_of_the_default_path(tmp_path):
    """The fast path (images held on the device, crop/flip/normalise per batch there) changes where the work runs,
    not what is computed: the same batches, augmentations and losses, step by step."""
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    create_cifar_model("resnet8", num_labels=10, id2label=dict(enumerate(CIFAR10_CLASSES)),
                       label2id={c: i for i, c in enumerate(CIFAR10_CLASSES)}).save_pretrained(teacher)
    data = _synthetic_cifar()
    default, fast = _cifar_run(tmp_path, False, data, teacher), _cifar_run(tmp_path, True, data, teacher)
    assert not default.train_dataset.batched and fast.train_dataset.batched
    logged = [[{k: e[k] for k in ("loss", "loss_ce", "loss_logit", "loss_feature")}
               for e in trainer.state.log_history if "loss_feature" in e] for trainer in (default, fast)]
    assert len(logged[0]) == 5 and logged[0] == logged[1]
    for (name, a), b in zip(default.student.state_dict().items(), fast.student.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    # and the on-device path's data loading reads nothing back either (within an epoch: at each epoch's start, torch's
    # DataLoader draws its base seed with a CPU .item(), which is no device sync)
    counter = SyncCounter()
    _cifar_run(tmp_path / "count", True, data, teacher, counter)
    assert counter.counts and set(counter.counts) == {0}, counter.counts
