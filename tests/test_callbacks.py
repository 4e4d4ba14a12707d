"""Projector diagnostics: measures on hand-made projectors, the callback inside a real Trainer run, and the plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_args, random_image_dataset, tiny_timm_vit, tiny_vit
from plotting import plot_correlation, plot_correlation_matrices, plot_singular_values
from torch import nn
from transformers import TrainerCallback

from hf_projkd import DistillationTrainer
from hf_projkd.callbacks import (
    ProjectorDiagnosticsCallback,
    add_projector_diagnostics,
    correlation_summary,
    effective_rank,
    linear_predictability,
    spectrum_summary,
    standardised_cross_correlation,
    unwrap_distillation_model,
)
from hf_projkd.projector import projector_weight

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _linear_with_spectrum(singular_values: list[float], seed: int = 0) -> nn.Linear:
    """A square nn.Linear whose weight is U diag(s) V^T with random orthogonal U, V."""
    g = torch.Generator().manual_seed(seed)
    n = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    layer = nn.Linear(n, n)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor(singular_values)) @ v.T)
    return layer


def test_spectrum_summary_recovers_known_singular_values() -> None:
    values = [8.0, 4.0, 2.0, 1.0, 0.05, 0.01]
    layer = _linear_with_spectrum(values)
    summary = spectrum_summary(torch.linalg.svdvals(projector_weight(layer)), near_zero=0.01)
    assert summary["sv_top"] == pytest.approx(8.0, rel=1e-4)
    assert summary["sv_min"] == pytest.approx(0.01, rel=1e-3)
    assert summary["sv_median"] == pytest.approx(1.0, rel=1e-4)  # torch's median: the lower middle value
    assert summary["sv_near_zero_share"] == pytest.approx(2 / 6)  # 0.05 and 0.01 are below 0.01 * 8 = 0.08
    p = torch.tensor(values, dtype=torch.float64) / sum(values)
    assert summary["effective_rank"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-4)
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_identity_projection_keeps_diagonal_random_rotation_spreads_it() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=g) * torch.linspace(0.5, 3.0, 16) + 2.0  # scale/shift: standardised away
    identity = standardised_cross_correlation(x, x * 5.0 - 1.0)
    ident = correlation_summary(identity)
    assert ident["corr_diag"] == pytest.approx(1.0, abs=1e-3)
    assert ident["corr_offdiag"] < 0.05  # independent input dims: only sampling noise ~ 1/sqrt(1024)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    rotated = correlation_summary(standardised_cross_correlation(x / x.std(0), (x / x.std(0)) @ rotation))
    assert rotated["corr_diag"] < 0.5 and rotated["corr_offdiag"] > 0.1
    # the correlation of standardised sides IS the rotation here (up to sampling noise)
    full = standardised_cross_correlation(x / x.std(0), (x / x.std(0)) @ rotation)
    assert torch.allclose(full, rotation, atol=0.1)
    with pytest.raises(ValueError, match="same batch"):
        standardised_cross_correlation(x, x[:10])


def test_linear_r2_is_one_for_linear_projectors_and_lower_for_mlp() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    torch.manual_seed(0)
    linear, mlp = nn.Linear(16, 24), nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24))
    with torch.no_grad():
        assert linear_predictability(x, linear(x)) == pytest.approx(1.0, abs=1e-3)
        assert linear_predictability(x, mlp(x)) < 0.9
    noise = torch.randn(600, 24, generator=g)
    assert linear_predictability(x, noise) < 0.1  # ~ d_in / N by chance
    with pytest.raises(ValueError, match="more samples than input dims"):
        linear_predictability(x[:16], noise[:16])

    # the callback keeps the last ~r2_samples projector inputs from the hook and pushes them through the projector
    for projector, low, high in ((linear, 0.999, 1.0), (mlp, 0.0, 0.9)):
        callback = ProjectorDiagnosticsCallback(every_n_steps=1, r2_samples=256)
        projector.train()
        hook = projector.register_forward_hook(callback._capture)
        with torch.no_grad():
            for start in range(0, 600, 50):
                projector(x[start : start + 50])
        kept = sum(batch.shape[0] for batch in callback._recent_inputs)
        assert 256 <= kept < 256 + 50
        value = callback._snapshot(projector, step=1).linear_r2
        assert low <= value <= high + 1e-6
        assert sum(batch.shape[0] for batch in callback._recent_inputs) == kept  # its own forward is not recorded
        hook.remove()


def _trainer(tmp_path: Path, **overrides) -> DistillationTrainer:
    args = make_args(tmp_path, **{"max_steps": 4, "logging_steps": 2, **overrides})
    return DistillationTrainer(
        model=tiny_vit(), teacher_model=tiny_timm_vit(), args=args, train_dataset=random_image_dataset(64)
    )


class _Recorder(TrainerCallback):
    """A reporting callback added the normal way (after the built-in ones): what would TensorBoard see?"""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_callback_logs_through_trainer_and_keeps_history(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    recorder = _Recorder()
    trainer.add_callback(recorder)
    callback = add_projector_diagnostics(trainer)
    initial = torch.linalg.svdvals(projector_weight(trainer.model.projector).detach()).tolist()
    trainer.train()

    assert [s.step for s in callback.history] == [0, 2, 4]  # every logging_steps, plus the initial projector
    assert callback.history[0].singular_values == pytest.approx(initial, rel=1e-5)
    assert callback.history[0].corr_diag is None and callback.history[0].linear_r2 is None  # no batch at step 0
    final = torch.linalg.svdvals(projector_weight(trainer.model.projector).detach()).tolist()
    assert callback.history[-1].singular_values == pytest.approx(final, rel=1e-5)
    assert callback.history[-1].singular_values != pytest.approx(initial, rel=1e-3)  # the projector trained
    assert len(final) == 32 and callback.last_correlation.shape == (32, 48)  # student 32-d -> teacher 48-d

    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["step"] for log in train_logs] == [2, 4]
    for log, snapshot in zip(train_logs, callback.history[1:], strict=True):
        assert log["projector/sv_top"] == pytest.approx(snapshot.summary["sv_top"], rel=1e-4)
        assert 0.0 <= log["projector/corr_diag"] <= 1.0 and 0.0 <= log["projector/corr_offdiag"] <= 1.0
        assert log["projector/corr_diag"] == pytest.approx(snapshot.corr_diag, abs=1e-5)
    seen = [log for log in recorder.logs if "loss" in log]
    assert all("projector/effective_rank" in log for log in seen)  # reporting callbacks got the values


def test_correlation_is_measured_on_the_projector_batch(tmp_path: Path) -> None:
    """The hooked batch gives the same correlation as recomputing it from the captured tensors."""
    trainer = _trainer(tmp_path, max_steps=1, logging_steps=1)
    callback = add_projector_diagnostics(trainer)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    trainer.model.projector.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    trainer.train()
    assert len(seen) == 1
    expected = standardised_cross_correlation(*seen[0])
    assert torch.allclose(callback.last_correlation, expected, atol=1e-6)
    assert callback.history[-1].corr_diag == pytest.approx(correlation_summary(expected)["corr_diag"])


def test_gradient_accumulation_measures_per_optimizer_step_on_one_micro_batch(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, gradient_accumulation_steps=2)
    callback = add_projector_diagnostics(trainer)
    sizes: list[int] = []
    original = callback._capture

    def spy(module, inputs, output):
        before = callback._captured
        original(module, inputs, output)
        if callback._captured is not None and before is None:
            sizes.append(inputs[0].shape[0])

    callback._capture = spy  # on_train_begin hooks `self._capture`, i.e. this spy
    trainer.train()
    assert [s.step for s in callback.history] == [0, 2, 4]  # optimizer steps, not micro-batches
    assert sizes == [8, 8]  # one micro-batch captured per measurement


def test_unwrap_finds_the_model_under_ddp_and_compile_wrappers() -> None:
    inner = nn.Module()
    ddp_like, compiled_like = nn.Module(), nn.Module()
    ddp_like.module = inner
    compiled_like._orig_mod = ddp_like
    assert unwrap_distillation_model(compiled_like) is inner and unwrap_distillation_model(inner) is inner


def test_callback_refuses_a_run_without_projector(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, feature_loss_weight=0.0)
    with pytest.raises(ValueError, match="feature_loss_weight > 0"):
        add_projector_diagnostics(trainer)
    trainer.add_callback(ProjectorDiagnosticsCallback(every_n_steps=1))
    with pytest.raises(ValueError, match="needs a DistillationModel with a projector"):
        trainer.train()
    with pytest.raises(ValueError, match="every_n_steps"):
        ProjectorDiagnosticsCallback(every_n_steps=0)


def _history(seed: int, size: int, steps: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        values = (torch.rand(size, generator=g) * (1.0 - 0.15 * step)).clamp_min(1e-6)
        out.append({"step": step * 10, "singular_values": values.tolist(),
                    "summary": spectrum_summary(values), "corr_diag": 0.1 * step, "corr_offdiag": 0.05})
    return out


def test_plots_are_written_and_non_empty(tmp_path: Path) -> None:
    runs = {"bn": _history(0, 16), "none": _history(1, 16), "wide": _history(2, 100)}  # wide: quantile mode
    paths = [
        plot_singular_values(runs, tmp_path / "sv.png"),
        plot_correlation(runs, tmp_path / "corr.png"),
        plot_correlation_matrices({"a": torch.eye(8), "b": torch.rand(8, 12)}, tmp_path / "sub" / "mat.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path
    with pytest.raises(ValueError, match="empty history"):
        plot_singular_values({"x": []}, tmp_path / "bad.png")
