"""Launched by tests/test_distributed.py with ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU).

Writes ``rank{r}.pt`` into the output folder given as argv[1]:
- ``world_size``: must be 2 (``--cpu --num_processes 2`` would silently start one process);
- ``default`` / ``sync``: student + projector state and log history after 3 DDP steps of the DistillationTrainer
  with per-device and with global-batch feature-norm statistics;
- ``module``: loss, projector gradient and running statistics of a DistillationModel feature loss with
  ``sync_feature_norm=True``, the rank's shard of a fixed global batch, gradients averaged like DDP does;
- ``epochs``: the epochs a train dataset with ``set_epoch`` was told during a 3-epoch DDP run (accelerate's loader
  does not pass them on under DDP's seedable sampler; the trainer must);
- ``batchnorm``: a student WITH batch norm (timm ResNet) after training and an evaluation: its buffers on this rank,
  the eval metrics, and (rank 0) the folder ``save_model`` wrote, so that the test can check that the evaluated
  model and the saved one are the same on every rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (conftest's tiny factories)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import (  # noqa: E402
    EpochRecordingImages,
    make_args,
    random_image_dataset,
    tiny_timm_resnet,
    tiny_timm_vit,
    tiny_vit,
)

from hf_projkd import DistillationTrainer  # noqa: E402
from hf_projkd.distributed import world_size  # noqa: E402

PER_DEVICE_BATCH = 8
STEPS = 3


def ddp_training_args(output_dir: Path, **overrides: object):
    """Shared by this script and its single-process reference in the test: only the batch layout differs."""
    return make_args(
        output_dir, optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=0.0, max_steps=STEPS, train_sampling_strategy="sequential", feature_loss_weight=2.0,
        per_device_train_batch_size=PER_DEVICE_BATCH, **overrides,
    )


def build_trainer(output_dir: Path, student: torch.nn.Module | None = None, **overrides: object) -> DistillationTrainer:
    student, teacher = student if student is not None else tiny_vit(), tiny_timm_vit()
    torch.manual_seed(0)  # the projector's init
    data = random_image_dataset(2 * PER_DEVICE_BATCH * STEPS)
    return DistillationTrainer(student, teacher, ddp_training_args(output_dir, **overrides), train_dataset=data,
                               eval_dataset=random_image_dataset(32, seed=1), input_size=(3, 32, 32))


def batchnorm_check(output_dir: Path) -> dict:
    """Issue 12.15: after DDP training the ranks held different BN running statistics, so the evaluation reported a
    model other than the one saved. Now both see process 0's buffers before evaluating and saving."""
    trainer = build_trainer(output_dir, student=tiny_timm_resnet(), teacher_check="off")
    trainer.train()
    metrics = trainer.evaluate()
    buffers = {k: v.detach().cpu().clone() for k, v in trainer.student.state_dict().items() if "running" in k}
    trainer.save_model(str(output_dir / "student"))
    return {"metrics": metrics, "buffers": buffers, "saved": str(output_dir / "student")}


def trained_state(trainer: DistillationTrainer) -> dict:
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("teacher_norm")}
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"state": state, "logs": logs, "wrapped": type(trainer.model_wrapped).__name__}


def sync_module_check(rank: int, size: int) -> dict:
    """Feature loss of one shard with global-batch statistics; gradients averaged over ranks as DDP would."""
    from hf_projkd import DistillationModel, LossSettings

    settings = LossSettings("logsum", 2.0, 4.0, "kl", 1.0, 1.0, 1.0, 8.0, 1.0, 0.0)
    torch.manual_seed(0)
    model = DistillationModel(tiny_vit(), 32, 48, settings, sync_feature_norm=True)
    g = torch.Generator().manual_seed(1)
    student_features = torch.randn(16, 32, generator=g) * 3 + 1
    teacher_features = torch.randn(16, 48, generator=g) * 2 - 1
    shard = slice(rank * 16 // size, (rank + 1) * 16 // size)
    loss = model.feature_loss(student_features[shard], teacher_features[shard])
    loss.backward()
    grad = model.projector.weight.grad.clone()
    dist.all_reduce(grad)
    return {
        "loss": loss.detach(),
        "grad": grad / size,
        "running_mean": model.student_norm.running_mean.clone(),
        "running_var": model.student_norm.running_var.clone(),
    }


def main() -> None:
    out = Path(sys.argv[1])
    results: dict = {}
    results["default"] = trained_state(build_trainer(out / "default"))
    results["sync"] = trained_state(build_trainer(out / "sync", sync_feature_norm=True))
    size = world_size()
    rank = dist.get_rank() if size > 1 else 0
    results["world_size"] = size
    if size > 1:
        results["module"] = sync_module_check(rank, size)
    results["batchnorm"] = batchnorm_check(out / "batchnorm")
    dataset = EpochRecordingImages(32)
    DistillationTrainer(tiny_vit(), tiny_timm_vit(), make_args(out / "epochs", max_steps=-1, num_train_epochs=3,
                                                               teacher_check="off"), train_dataset=dataset).train()
    results["epochs"] = sorted(set(dataset.epochs))
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
