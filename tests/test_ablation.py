"""Ablation: cached teacher outputs give the same loss as running the teacher, and the recipe runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import ablation as recipe
import pytest
import torch
from ablation import ARMS, CE_ARM, SRD_ARM, AblationOptions, CachedTeacherDataset, draw_views, teacher_outputs
from conftest import RESNET20, make_args, needs_shared

from hf_projkd import DistillationTrainer, adapter_for
from hf_projkd.data.cifar import CifarCollator, DecodedImages
from hf_projkd.models import CIFAR10_RESNET_MEAN, CIFAR10_RESNET_STD, CIFAR100_MEAN, CIFAR100_STD, create_cifar_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(n: int = 16, seed: int = 0) -> DecodedImages:
    g = torch.Generator().manual_seed(seed)
    return DecodedImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (n,), generator=g))


def test_views_are_drawn_once_per_epoch_and_reproducible() -> None:
    images = _images(8)
    views = draw_views(images, epochs=3, seed=5)
    assert views.pixels.shape == (24, 3, 32, 32) and views.pixels.dtype == torch.uint8
    assert torch.equal(views.labels, images.labels.repeat(3))
    assert torch.equal(views.pixels, draw_views(images, epochs=3, seed=5).pixels)
    assert not torch.equal(views.pixels[:8], views.pixels[8:16])  # a fresh crop/flip per epoch


def test_cached_teacher_outputs_give_the_same_loss_without_running_the_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = create_cifar_model("resnet20", num_labels=10, image_mean=CIFAR10_RESNET_MEAN,
                                 image_std=CIFAR10_RESNET_STD).eval()
    student = create_cifar_model("resnet8", num_labels=10, image_mean=CIFAR100_MEAN, image_std=CIFAR100_STD)
    images = _images(16)
    plain = CifarCollator(CIFAR100_MEAN, CIFAR100_STD, CIFAR10_RESNET_MEAN, CIFAR10_RESNET_STD)
    logits, features = teacher_outputs(teacher, images, plain, batch_size=6)  # batches of 6: 3 chunks
    batch = plain(_items(images))
    direct = adapter_for(teacher)(batch["teacher_pixel_values"])
    assert torch.allclose(logits, direct.logits, atol=1e-5) and torch.allclose(features, direct.features, atol=1e-5)

    args = make_args(tmp_path, logit_loss="kl", feature_loss_weight=2.0, per_device_train_batch_size=16)
    cached_batch = CifarCollator(CIFAR100_MEAN, CIFAR100_STD)(
        CachedTeacherDataset(images, logits, features).__getitems__(list(range(16)))
    )
    assert set(cached_batch) == {"pixel_values", "labels", "teacher_logits", "teacher_features"}
    # no teacher model at all: the batch's cached outputs are the teacher
    cached = DistillationTrainer(student, None, make_args(tmp_path, logit_loss="kl", feature_loss_weight=2.0,
                                                          per_device_train_batch_size=16, teacher_feature_dim=64))
    reference = DistillationTrainer(student, teacher, args)
    # same projector in both, so the two losses must agree exactly up to float noise
    reference.model.projector.load_state_dict(cached.model.projector.state_dict())
    calls: list[int] = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    cached.model.train()
    loss_cached, out_cached = cached.compute_loss(cached.model, dict(cached_batch), return_outputs=True)
    assert calls == []  # the teacher did not run
    reference.model.train()
    loss_reference, out_reference = reference.compute_loss(reference.model, dict(batch), return_outputs=True)
    hook.remove()
    assert calls == [1]
    assert loss_cached.item() == pytest.approx(loss_reference.item(), rel=1e-4)
    assert out_cached.loss_feature.item() == pytest.approx(out_reference.loss_feature.item(), rel=1e-4)
    assert out_cached.loss_logit.item() == pytest.approx(out_reference.loss_logit.item(), rel=1e-4)
    with pytest.raises(ValueError, match="teacher outputs on exactly these views"):
        CachedTeacherDataset(images, logits[:3], features)


def _items(images: DecodedImages) -> list[dict[str, torch.Tensor]]:
    return [{"pixel_values": p, "labels": y} for p, y in zip(images.pixels, images.labels, strict=True)]


def test_options_refuse_unknown_arms_and_missing_inputs() -> None:
    with pytest.raises(ValueError, match="Unknown ablation arms"):
        AblationOptions(data="d", teacher="t", arms=["norm batch"])
    with pytest.raises(ValueError, match="needs data and teacher"):
        AblationOptions()
    with pytest.raises(ValueError, match="at least one seed"):
        AblationOptions(data="d", teacher="t", seeds=[])


@needs_shared
def test_ablation_recipe_runs_a_few_steps_and_writes_table_and_plots(tmp_path: Path) -> None:
    arms = [CE_ARM, SRD_ARM, "norm none"]
    report = recipe.main([
        "--teacher", str(RESNET20), "--output_dir", str(tmp_path), "--train_samples", "128", "--epochs", "1",
        "--eval_samples", "64", "--every_n_steps", "1", "--arms", *arms,
    ])
    assert report["complete"] and [r["arm"] for r in report["runs"]] == arms and report["runs"][0]["seed"] == 0
    assert report["setup"]["views"] == 128 and report["setup"]["teacher_feature_dim"] == 64
    srd = report["runs"][1]
    assert srd["steps"] == 2 and [s["step"] for s in srd["history"]] == [0, 1, 2]
    assert srd["history"][-1]["corr_diag"] is not None and len(srd["history"][-1]["singular_values"]) == 64
    assert "loss_feature" in srd["last_train_log"] and "projector/effective_rank" in srd["last_train_log"]
    assert report["runs"][0]["history"] == []  # the CE reference has no projector
    for run in report["runs"]:
        assert 0.0 <= run["top1"] <= 100.0
    saved = json.loads((tmp_path / "ablation_cifar10.json").read_text())
    assert saved["runs"][2]["feature_norm"] == ARMS["norm none"]["feature_norm"] == "none"
    text = (tmp_path / "ablation_cifar10.md").read_text()
    assert "## normalisation" in text and "| norm none | none | linear | logsum |" in text
    assert "python recipes/ablation.py --teacher" in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert "ablation_cifar10_spectrum_normalisation.png" in links and "ablation_cifar10_correlation.png" in links
    for link in links:
        data = (tmp_path / link).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, link
    (tmp_path / "ablation_cifar10.md").unlink()
    written = recipe.main(["--output_dir", str(tmp_path), "--replot"])
    assert (tmp_path / "ablation_cifar10.md").read_text() == text and len(written) == 2 + len(links)


def test_markdown_averages_seeds_and_takes_diagnostics_from_the_first() -> None:
    from ablation import markdown

    def run(arm: str, seed: int, top1: float, rank: float) -> dict:
        summary = {"effective_rank": rank, "sv_near_zero_share": 0.25, "sv_min": 0.1, "sv_top": 1.0}
        history = [{"step": 10, "singular_values": [1.0], "summary": summary, "corr_diag": 0.5, "corr_offdiag": 0.2,
                    "linear_r2": 1.0}]
        return {"arm": arm, "seed": seed, "top1": top1, "steps": 10, "wall_seconds": 5.0, "history": history,
                **ARMS[arm]}

    options = AblationOptions(data="d", teacher="t", seeds=[3, 4], arms=[SRD_ARM], command="python x.py")
    report = {
        "options": {**options.__dict__}, "machine": "m", "complete": True, "total_minutes": 1.0,
        "setup": {"teacher": "t", "teacher_top1": 80.0, "eval_samples": 10, "train_samples": 20, "views": 40,
                  "prepare_seconds": 1.0},
        "runs": [run(SRD_ARM, 3, 40.0, 7.0), run(SRD_ARM, 4, 42.0, 99.0), run("loss l2", 3, 41.0, 5.0),
                 run("loss l2", 4, 41.5, 5.0)],
    }
    text = markdown(report, {})
    row = next(line for line in text.splitlines() if line.startswith(f"| {SRD_ARM}"))
    assert "| 41.00 (40.00 / 42.00) | - |" in row and "| 7 |" in row and "| 25 % |" in row and "99" not in row
    row = next(line for line in text.splitlines() if line.startswith("| loss l2"))
    assert "| 41.25 (41.00 / 41.50) | +0.25 (+1.00 / -0.50) |" in row  # paired with the SRD run of the same seed
    assert "2 seed(s) (3, 4; diagnostics and figures: seed 3)" in text and "`python x.py`" in text
