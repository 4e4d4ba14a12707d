"""What the method does to GRADIENTS, pinned on tiny models: which parameters each loss term reaches, the feature
loss against a from-scratch reference (value and gradients), DeiT's two heads, and a teacher that never trains.

The tests compare values and gradients with references written here from the formulas, not with the package's own
code, so a bug that keeps every loss plausible (student features detached before the projector, the teacher's
features left un-normalised, KD sent to the class head) fails them. Float results are compared with tolerances, so
they hold at any thread count.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, make_args, random_image_dataset, tiny_timm_resnet, tiny_timm_vit, tiny_vit
from torch import nn
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
)

from hf_projkd import DistillationModel, DistillationTrainer, LossSettings, adapter_for

BN_EPS = 1e-4  # SRD's BatchNorm1d(affine=False, eps=1e-4)
Batch = dict[str, torch.Tensor]


# -- references, from the formulas (float64) ---------------------------------------------------------------------
def reference_batch_norm(x: torch.Tensor) -> torch.Tensor:
    """Affine-free batch norm with the batch's own statistics (biased variance), as SRD applies to both sides."""
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + BN_EPS)


def reference_feature_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor, exponent: float = 4.0) -> torch.Tensor:
    """``log(sum |BN(z_s W^T + b) - BN(z_t)|^exponent)`` in float64."""
    projected = student_features.double() @ weight.double().T + bias.double()
    diff = reference_batch_norm(projected) - reference_batch_norm(teacher_features.double())
    return torch.log(diff.abs().pow(exponent).sum())


def reference_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_b KL(softmax(t/T) || softmax(s/T))`` in float64."""
    log_p_s = torch.log_softmax(student_logits.double() / temperature, -1)
    log_p_t = torch.log_softmax(teacher_logits.double() / temperature, -1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * temperature**2


def reference_dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
                  beta: float, temperature: float) -> torch.Tensor:
    """Decoupled KD in float64: target-vs-rest KL (TCKD) and KL over the non-target classes only (NCKD)."""
    s, t = student_logits.double() / temperature, teacher_logits.double() / temperature
    p_s, p_t = s.softmax(-1), t.softmax(-1)
    target_s, target_t = p_s.gather(1, labels[:, None]), p_t.gather(1, labels[:, None])
    binary_s, binary_t = torch.cat([target_s, 1 - target_s], 1), torch.cat([target_t, 1 - target_t], 1)
    tckd = (binary_t * (binary_t.log() - binary_s.log())).sum(-1).mean()
    classes = s.shape[-1]
    others = torch.stack([torch.tensor([c for c in range(classes) if c != int(y)]) for y in labels])
    log_q_s, log_q_t = s.gather(1, others).log_softmax(-1), t.gather(1, others).log_softmax(-1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(-1).mean()
    return (alpha * tckd + beta * nckd) * temperature**2


def head_input(model: nn.Module, head: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output logits, what ``head`` received) of a plain forward of ``model``: the pooled pre-logit features."""
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        output = model(pixel_values)
    finally:
        handle.remove()
    return (output if isinstance(output, torch.Tensor) else output.logits), seen[-1]


def vit_features(student: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """A transformers ViT's class token after the final layer norm: the input of its classifier."""
    return student.vit(pixel_values).last_hidden_state[:, 0]


# -- builders ----------------------------------------------------------------------------------------------------
def settings(**overrides: object) -> LossSettings:
    values: dict[str, object] = dict(
        feature_loss="logsum", feature_loss_weight=2.0, logsum_exponent=4.0, logit_loss="kl", logit_loss_weight=1.0,
        temperature=1.0, dkd_alpha=1.0, dkd_beta=8.0, ce_weight=1.0, label_smoothing=0.0,
    )
    values.update(overrides)
    return LossSettings(**values)


def feature_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student (16, 32) and teacher (16, 48) features far from zero mean / unit variance, so that a missing batch
    norm on either side shows; some teacher dims have a variance near eps, so that the eps (1e-4) shows too."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(16, 32, generator=g) * 3 + 1
    teacher = torch.randn(16, 48, generator=g) * 4 - 2
    teacher[:, :8] *= 0.004
    return student, teacher


def tiny_deit(seed: int = 3) -> DeiTForImageClassificationWithTeacher:
    """A DeiT with a distillation token: class-token head ``cls_classifier``, distillation head beside it."""
    torch.manual_seed(seed)
    config = DeiTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=NUM_CLASSES, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = DeiTForImageClassificationWithTeacher(config)
    with torch.no_grad():  # transformers initialises both tokens and the position embeddings to zero: tell them apart
        embeddings = model.deit.embeddings
        for parameter in (embeddings.cls_token, embeddings.distillation_token, embeddings.position_embeddings):
            parameter.normal_(std=0.5)
    return model


def trainer_for(tmp_path: Path, student: nn.Module | None = None, teacher: nn.Module | None = None,
                **overrides: object) -> DistillationTrainer:
    """Plain SGD without weight decay or clipping, so a parameter moves exactly when it has a gradient."""
    values: dict[str, object] = dict(optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", weight_decay=0.0,
                                     max_grad_norm=0.0, max_steps=1, train_sampling_strategy="sequential",
                                     teacher_check="off")
    values.update(overrides)
    return DistillationTrainer(student if student is not None else tiny_vit(),
                               teacher if teacher is not None else tiny_timm_vit(), make_args(tmp_path, **values),
                               train_dataset=random_image_dataset(16))


def batch(n: int = 8, seed: int = 5) -> Batch:
    data = random_image_dataset(n, seed=seed)[:n]
    return {"pixel_values": data["pixel_values"], "labels": data["labels"]}


def reached(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` got a non-zero gradient."""
    return any(p.grad is not None and bool(p.grad.abs().max() > 0) for p in module.parameters())


def assert_grads_close(got: torch.Tensor | None, want: torch.Tensor, name: str, scale: float | None = None) -> None:
    """Gradients of float32 code against a float64 reference, to a tolerance relative to ``scale`` (default: the
    gradient's own largest value; a gradient that is zero in exact arithmetic needs another one)."""
    assert got is not None, f"{name}: no gradient"
    scale = want.abs().max().item() if scale is None else scale
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=2e-3 * scale + 1e-9, msg=name)


# -- the feature loss against the reference --------------------------------------------------------------------
@pytest.mark.parametrize("exponent", [4.0, 3.0])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_feature_loss_and_its_gradients_match_the_reference(mode: str, exponent: float) -> None:
    """Value and gradients w.r.t. W, b and z_s; in eval mode too, where batch norm must still use batch statistics
    (an odd exponent also pins the absolute value)."""
    torch.manual_seed(0)
    model = DistillationModel(tiny_vit(), 32, 48, settings(logsum_exponent=exponent))
    model.train()
    model.feature_loss(*feature_pair(seed=1))  # moves the running statistics away from their initial values
    model.train(mode == "train")
    student, teacher = feature_pair()
    student.requires_grad_(True)
    weight, bias = model.projector.weight, model.projector.bias
    loss = model.feature_loss(student, teacher)
    grads = torch.autograd.grad(loss, [weight, bias, student])

    inputs = [t.detach().double().requires_grad_(True) for t in (weight, bias, student)]
    expected = reference_feature_loss(inputs[2], teacher, inputs[0], inputs[1], exponent)
    expected_grads = torch.autograd.grad(expected, inputs)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("weight", "bias", "student features"), grads, expected_grads, strict=True):
        scale = expected_grads[0].abs().max().item() if name == "bias" else None  # the bias's is zero, see below
        assert_grads_close(got, want, name, scale)
    assert expected_grads[2].abs().max() > 1e-3  # the student's features do get a gradient
    # the projector's bias is removed again by the student-side batch norm: its gradient is zero
    assert expected_grads[1].abs().max() < 1e-9 * expected_grads[0].abs().max()


def test_the_reference_separates_the_plausible_bugs() -> None:
    """The reference test above can fail: an un-normalised teacher side or another eps changes the loss by far more
    than its tolerance."""
    torch.manual_seed(0)
    model = DistillationModel(tiny_vit(), 32, 48, settings())
    student, teacher = feature_pair()
    weight, bias = model.projector.weight.detach(), model.projector.bias.detach()
    good = reference_feature_loss(student, teacher, weight, bias)
    projected = student.double() @ weight.double().T + bias.double()
    unnormalised_teacher = torch.log((reference_batch_norm(projected) - teacher.double()).abs().pow(4).sum())
    other_eps = (teacher.double() - teacher.double().mean(0)) / torch.sqrt(teacher.double().var(0, False) + 1e-5)
    eps_loss = torch.log((reference_batch_norm(projected) - other_eps).abs().pow(4).sum())
    for wrong in (unnormalised_teacher, eps_loss):
        assert abs(wrong.item() - good.item()) > 1e-2


def test_trained_parameters_are_the_student_and_the_projector_only() -> None:
    """The normalisers have no affine parameters (SRD), so nothing but student and projector can move."""
    model = DistillationModel(tiny_vit(), 32, 48, settings())
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    student = {f"student.{name}" for name, _ in model.student.named_parameters()}
    assert names == student | {"projector.weight", "projector.bias"}


# -- the whole training path -----------------------------------------------------------------------------------
def test_feature_term_alone_trains_the_student_not_only_the_projector(tmp_path: Path) -> None:
    """With CE and KD off, every weight matrix of the student before its features (tokens and embeddings included)
    gets a non-zero gradient and moves in the step; the classification head (after the features) gets none and
    stays. The student detached before the projector would leave the projector training and the student idle."""
    trainer = trainer_for(tmp_path, ce_weight=0.0, logit_loss="none", feature_loss_weight=2.0)
    loss = trainer.compute_loss(trainer.model.train(), batch())
    loss.backward()
    student = trainer.model.student
    body = [name for name, p in student.named_parameters() if p.ndim >= 2 and not name.startswith("classifier.")]
    assert len(body) >= 10
    grads = dict(student.named_parameters())
    for name in body:
        grad = grads[name].grad
        assert grad is not None and grad.abs().max() > 1e-8, f"{name} gets no gradient from the feature term"
    assert student.classifier.weight.grad is None and student.classifier.bias.grad is None
    assert reached(trainer.model.projector)
    trainer.model.zero_grad(set_to_none=True)

    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    trainer.train()
    after = dict(trainer.student.named_parameters())
    for name in body:
        assert not torch.equal(after[name], before[name]), f"{name} did not move"
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(after[name], before[name]), name


def test_trainer_feature_loss_and_gradients_match_the_reference(tmp_path: Path) -> None:
    """Through ``compute_loss`` (teacher forward, adapter, projector, both norms): the feature loss, its gradient
    w.r.t. the projector and w.r.t. every student parameter equal the reference built from plain forwards."""
    trainer = trainer_for(tmp_path, ce_weight=0.0, logit_loss="none", feature_loss_weight=2.0)
    inputs = batch()
    reference_student = copy.deepcopy(trainer.student)
    model = trainer.model.train()
    loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    loss.backward()

    with torch.no_grad():
        _, teacher_features = head_input(trainer.teacher, trainer.teacher.get_classifier(), inputs["pixel_values"])
    weight = model.projector.weight.detach().double().requires_grad_(True)
    bias = model.projector.bias.detach().double().requires_grad_(True)
    student_features = vit_features(reference_student, inputs["pixel_values"])
    expected = reference_feature_loss(student_features, teacher_features, weight, bias)
    (2.0 * expected).backward()

    torch.testing.assert_close(outputs.loss_feature.double(), expected.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss.double(), 2.0 * expected.detach(), rtol=1e-4, atol=1e-4)
    assert_grads_close(model.projector.weight.grad, weight.grad, "projector.weight")
    assert_grads_close(model.projector.bias.grad, bias.grad, "projector.bias", scale=weight.grad.abs().max().item())
    reference = dict(reference_student.named_parameters())
    # some gradients are zero in exact arithmetic (biases whose shift batch norm removes): one scale for all
    scale = max(p.grad.abs().max().item() for p in reference.values() if p.grad is not None)
    for name, p in model.student.named_parameters():
        if reference[name].grad is None:
            assert p.grad is None, name
        else:
            assert_grads_close(p.grad, reference[name].grad.double(), name, scale)


@pytest.mark.parametrize("logit_loss", ["kl", "dkd"])
def test_total_loss_is_the_weighted_sum_of_the_reference_terms(tmp_path: Path, logit_loss: str) -> None:
    """CE (with label smoothing), KL or DKD (with their temperature and alpha/beta) and the feature loss each equal
    their reference, and the total weights each with its own weight (all different, so a swap shows)."""
    trainer = trainer_for(tmp_path, ce_weight=0.3, logit_loss=logit_loss, logit_loss_weight=0.7, temperature=3.0,
                          dkd_alpha=0.5, dkd_beta=2.5, feature_loss_weight=1.9, label_smoothing_factor=0.2)
    inputs = batch()
    pixels, labels = inputs["pixel_values"], inputs["labels"]
    model = trainer.model.train()
    loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    with torch.no_grad():
        teacher_logits, teacher_features = head_input(trainer.teacher, trainer.teacher.get_classifier(), pixels)
        student_logits = model.student(pixels).logits
        student_features = vit_features(model.student, pixels)
        ce = F.cross_entropy(student_logits.double(), labels, label_smoothing=0.2)
        if logit_loss == "kl":
            logit = reference_kd(student_logits, teacher_logits, 3.0)
        else:
            logit = reference_dkd(student_logits, teacher_logits, labels, 0.5, 2.5, 3.0)
        feature = reference_feature_loss(student_features, teacher_features, model.projector.weight,
                                         model.projector.bias)
    for name, want in (("loss_ce", ce), ("loss_logit", logit), ("loss_feature", feature)):
        torch.testing.assert_close(outputs[name].double(), want, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(loss.double(), 0.3 * ce + 0.7 * logit + 1.9 * feature, rtol=1e-4, atol=1e-5)


def test_dkd_takes_the_target_class_of_soft_labels() -> None:
    """Mixup gives soft targets (B, C); DKD needs the target class of each sample: their argmax."""
    torch.manual_seed(0)
    model = DistillationModel(tiny_vit(), 32, 48, settings(logit_loss="dkd", temperature=4.0, ce_weight=0.0,
                                                            feature_loss_weight=0.0)).train()
    inputs = batch()
    labels = inputs["labels"]
    soft = F.one_hot(labels, NUM_CLASSES).float() * 0.6 + 0.4 / NUM_CLASSES
    teacher_logits = torch.randn(len(labels), NUM_CLASSES, generator=torch.Generator().manual_seed(2)) * 3
    out = model(inputs["pixel_values"], labels=soft, teacher_logits=teacher_logits)
    with torch.no_grad():
        expected = reference_dkd(model.student(inputs["pixel_values"]).logits, teacher_logits, labels, 1.0, 8.0, 4.0)
    torch.testing.assert_close(out.loss_logit.double(), expected, rtol=1e-4, atol=1e-5)


def test_logged_components_are_means_over_the_logging_window_and_accumulation(tmp_path: Path) -> None:
    """Each logged component is averaged like the Trainer's loss (over 2 steps of 2 micro-batches here), so the
    logged loss is the weighted sum of the logged components."""
    trainer = trainer_for(tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=2,
                          per_device_train_batch_size=4, ce_weight=0.3, logit_loss_weight=0.7,
                          feature_loss_weight=1.9)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        total = 0.3 * entry["loss_ce"] + 0.7 * entry["loss_logit"] + 1.9 * entry["loss_feature"]
        assert entry["loss"] == pytest.approx(total, abs=1e-3)


# -- DeiT with a distillation token ----------------------------------------------------------------------------
DEIT_TERMS = {
    "ce": dict(ce_weight=1.0, logit_loss="none", feature_loss_weight=0.0),
    "kl": dict(ce_weight=0.0, logit_loss="kl", temperature=2.0, feature_loss_weight=0.0),
    "dkd": dict(ce_weight=0.0, logit_loss="dkd", temperature=2.0, feature_loss_weight=0.0),
    "feature": dict(ce_weight=0.0, logit_loss="none", feature_loss_weight=2.0),
}
#: which head each term alone may reach: (cls_classifier, distillation_classifier)
DEIT_HEADS = {"ce": (True, False), "kl": (False, True), "dkd": (False, True), "feature": (False, False)}
DEIT_WEIGHTS = {"ce": "ce_weight", "kl": "logit_loss_weight", "dkd": "logit_loss_weight",
                "feature": "feature_loss_weight"}


@pytest.mark.parametrize("term", sorted(DEIT_TERMS))
def test_deit_ce_reaches_the_class_head_and_distillation_the_distillation_head(tmp_path: Path, term: str) -> None:
    """CE trains the class-token head only, KL/DKD the distillation-token head only, and the feature term reads the
    distillation token (before that head), reaching neither head."""
    trainer = trainer_for(tmp_path, student=tiny_deit(), **DEIT_TERMS[term])
    inputs = batch()
    pixels, labels = inputs["pixel_values"], inputs["labels"]
    model = trainer.model.train()
    loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    loss.backward()
    student = model.student
    assert (reached(student.cls_classifier), reached(student.distillation_classifier)) == DEIT_HEADS[term]
    assert reached(student.deit.embeddings)  # every term trains the body

    with torch.no_grad():
        reference = student(pixels)
        tokens = student.deit(pixels).last_hidden_state
        teacher_logits, teacher_features = head_input(trainer.teacher, trainer.teacher.get_classifier(), pixels)
    if term == "ce":
        want = F.cross_entropy(reference.cls_logits.double(), labels)
    elif term == "kl":
        want = reference_kd(reference.distillation_logits, teacher_logits, 2.0)
    elif term == "dkd":
        want = reference_dkd(reference.distillation_logits, teacher_logits, labels, 1.0, 8.0, 2.0)
    else:  # token 1 is the distillation token; the gradients (unlike the values) tell it from the class token
        want, grad = _feature_loss_and_weight_grad(model.projector, tokens[:, 1], teacher_features)
        _, wrong_grad = _feature_loss_and_weight_grad(model.projector, tokens[:, 0], teacher_features)
        assert_grads_close(model.projector.weight.grad / 2.0, grad, "projector.weight")
        assert (wrong_grad - grad).abs().max() > 0.1 * grad.abs().max()
    weight_of_term = getattr(trainer.args, DEIT_WEIGHTS[term])
    torch.testing.assert_close(loss.double() / weight_of_term, want, rtol=1e-4, atol=1e-5)


def _feature_loss_and_weight_grad(projector: nn.Linear, student_features: torch.Tensor,
                                  teacher_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight = projector.weight.detach().double().requires_grad_(True)
    loss = reference_feature_loss(student_features, teacher_features, weight, projector.bias.detach())
    return loss.detach(), torch.autograd.grad(loss, weight)[0]


def test_transformers_features_are_read_before_an_inplace_head_dropout() -> None:
    """MobileNetV2's head dropout (0.8, in place) must not reach the features the feature term matches, only the
    logits. (Belongs with tests/test_families.py, whose MobileNetV2 case has features of ~1e-27 at transformers'
    default init: too small for its tolerances to see a dropout. initializer_range=0.3 gives features of ~1.)"""
    torch.manual_seed(0)
    model = MobileNetV2ForImageClassification(MobileNetV2Config(
        image_size=32, depth_multiplier=0.25, num_labels=NUM_CLASSES, classifier_dropout_prob=0.8,
        initializer_range=0.3)).train()
    for module in model.modules():  # only the head's dropout stays random: batch norm uses its running statistics
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    adapter = adapter_for(model)
    pixels = batch(4)["pixel_values"]
    torch.manual_seed(1)
    first = adapter(pixels)
    torch.manual_seed(2)
    second = adapter(pixels)
    model.eval()
    reference = adapter(pixels)
    scale = reference.features.abs().max().item()
    assert scale > 0.1
    for got in (first, second):
        torch.testing.assert_close(got.features, reference.features, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.allclose(first.logits, second.logits)  # the dropout still acts on the logits


# -- the teacher -----------------------------------------------------------------------------------------------
def test_teacher_gets_no_gradient_and_its_outputs_do_not_depend_on_the_student(tmp_path: Path) -> None:
    """A batch-norm teacher, put in train mode by mistake: during a run that changes the student (all three terms
    on) the teacher gets no gradient, keeps its weights and running statistics, and gives each batch exactly what
    an untouched copy of it gives in eval mode."""
    teacher = tiny_timm_resnet()
    trainer = trainer_for(tmp_path, teacher=teacher, max_steps=2)
    reference = copy.deepcopy(teacher).eval()
    teacher_state = copy.deepcopy(teacher.state_dict())
    trainer.teacher.train()
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    forward = trainer.teacher_forward

    def recording(pixel_values: torch.Tensor):
        out = forward(pixel_values)
        seen.append((pixel_values.clone(), out.logits, out.features))
        return out

    trainer.teacher_forward = recording
    probe = batch(seed=9)["pixel_values"]
    features_before = forward(probe).features
    student_before = {name: p.detach().clone() for name, p in trainer.student.named_parameters()}
    trainer.train()

    assert any(not torch.equal(p, student_before[name]) for name, p in trainer.student.named_parameters())
    assert len(seen) == 2
    for pixels, logits, features in seen:
        assert not logits.requires_grad and not features.requires_grad
        with torch.no_grad():
            want_logits, want_features = head_input(reference, reference.get_classifier(), pixels)
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features, want_features, rtol=1e-5, atol=1e-5)
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    for name, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), f"teacher {name} changed"
    torch.testing.assert_close(forward(probe).features, features_before, rtol=1e-5, atol=1e-6)


def test_under_mixup_the_teacher_sees_the_mixed_teacher_pixel_values(tmp_path: Path) -> None:
    """Batches may carry the teacher's own ``teacher_pixel_values`` (another normalisation of the same images):
    under mixup they are mixed with the student's lam and partner, so the teacher's targets are for the images the
    student sees. (Belongs with tests/test_mixup.py; here because the core mutation check found it unpinned.)"""
    trainer = trainer_for(tmp_path, mixup_alpha=0.8)
    student_inputs: list[torch.Tensor] = []
    trainer.model.student.register_forward_pre_hook(lambda module, args: student_inputs.append(args[0].clone()))
    teacher_inputs: list[torch.Tensor] = []
    forward = trainer.teacher_forward
    trainer.teacher_forward = lambda pixels: teacher_inputs.append(pixels.clone()) or forward(pixels)
    inputs = batch()
    inputs["teacher_pixel_values"] = inputs["pixel_values"] * 2 + 1
    np.random.seed(0)  # timm's Mixup draws lam with numpy
    trainer.compute_loss(trainer.model.train(), inputs)
    mixed = student_inputs[-1]
    assert not torch.allclose(mixed, inputs["pixel_values"], atol=1e-3)  # the batch was mixed
    torch.testing.assert_close(teacher_inputs[-1], mixed * 2 + 1, rtol=1e-5, atol=1e-5)
