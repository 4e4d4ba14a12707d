"""The teacher check: before training, score the teacher on the data exactly as it will be fed.

A teacher that is fed wrongly normalised images, or whose classes are in another order than the dataset's labels,
or that is simply the wrong teacher, still produces logits and features: training runs and the result is silently
worse. One measurement catches all three: the teacher's top-1 against the dataset's labels on the first examples,
as fed. It is compared with chance, with the same teacher under other plausible input normalisations, and with the
best relabelling of its predictions; each finding names the likely cause and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .families import Normalization

#: Input normalisations a dataset pipeline commonly uses, tried when the teacher scores poorly as fed.
COMMON_NORMALIZATIONS: dict[str, Normalization] = {
    "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "CIFAR-100 (CRD) mean/std": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "CIFAR-10 mean/std": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mean/std 0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "no normalisation (pixels in [0, 1])": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class TeacherCheckError(ValueError):
    """The teacher scores near chance on the data as fed (``teacher_check='error'``)."""


@dataclass
class TeacherCheckResult:
    """Teacher top-1 (in [0, 1]) on ``samples`` examples as fed, and under the alternatives tried."""

    samples: int
    num_classes: int
    top1: float
    alternatives: dict[str, float] = field(default_factory=dict)
    better: list[str] = field(default_factory=list)
    relabelled_top1: float | None = None

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    @property
    def near_chance(self) -> bool:
        """Not significantly above chance (one-sided binomial, 3 standard deviations)."""
        n, p = self.samples, self.chance
        return self.top1 * n < p * n + 3 * math.sqrt(n * p * (1 - p)) + 1

    def problems(self) -> list[str]:
        """What looks wrong, each with its likely cause and fix; empty when the teacher looks right."""
        found = []
        if self.better:
            found.append(
                f"the teacher scores {100 * self.top1:.1f}% top-1 on the first {self.samples} examples as fed, but "
                + ", ".join(f"{100 * self.alternatives[name]:.1f}% if the inputs were converted from {name}"
                            for name in self.better)
                + ": the data is probably normalised that way, not as the student declares. Pass the image processor "
                "(processing_class=...) or a collator with image_mean/image_std, or give each batch "
                "'teacher_pixel_values' prepared with the teacher's own transform"
            )
        if self.relabelled_top1 is not None:
            found.append(
                f"the teacher's predictions match the labels {100 * self.relabelled_top1:.1f}% of the time once its "
                f"classes are renamed, against {100 * self.top1:.1f}% as they are: the dataset's labels are probably "
                "in "
                "another order than the teacher's classes. Map the labels to the teacher's class order (its "
                "config.id2label / pretrained_cfg['label_names']) before training"
            )
        if self.near_chance and not found:
            found.append(
                f"the teacher scores {100 * self.top1:.1f}% top-1 on the first {self.samples} examples as fed, near "
                f"chance ({100 * self.chance:.1f}%): check that it is the right teacher for this dataset, that its "
                "inputs are normalised as it was trained, and that the labels use its class order"
            )
        return found


def _mcnemar_better(candidate: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``candidate``'s per-sample hits beat ``reference``'s (paired test, z > 3, and > 2 points)."""
    gained = int((candidate & ~reference).sum())
    lost = int((~candidate & reference).sum())
    if gained + lost == 0:
        return False
    z = (gained - lost) / math.sqrt(gained + lost)
    return z > 3 and (gained - lost) / candidate.numel() > 0.02


def _relabelled_top1(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Top-1 after mapping each predicted class to the label it most often stands for (an upper bound that only
    means something with several examples per class)."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    counts.index_put_((predictions, labels), torch.ones_like(labels), accumulate=True)
    return float(counts.max(dim=1).values.sum()) / labels.numel()


@torch.no_grad()
def score_teacher(
    batches: Iterable[Mapping[str, torch.Tensor]],
    teacher_logits: Callable[[torch.Tensor], torch.Tensor],
    feeds: Mapping[str, Callable[[Mapping[str, torch.Tensor]], torch.Tensor]],
    num_classes: int,
    max_samples: int,
) -> TeacherCheckResult | None:
    """Score the teacher under each way of feeding it (``feeds``: name -> batch -> teacher inputs; the first one is
    how training feeds it) on up to ``max_samples`` examples of ``batches``; None when the batches carry no labels
    (label-free distillation: nothing to score against)."""
    hits: dict[str, list[torch.Tensor]] = {name: [] for name in feeds}
    predicted, labels_seen = [], []
    seen = 0
    for batch in batches:
        labels = batch.get("labels")
        if labels is None:
            return None
        labels = labels.argmax(-1) if labels.dim() == 2 else labels
        take = min(labels.shape[0], max_samples - seen)
        for index, (name, feed) in enumerate(feeds.items()):
            prediction = teacher_logits(feed(batch)[:take]).argmax(-1)
            hits[name].append((prediction == labels[:take]).cpu())
            if index == 0:
                predicted.append(prediction.cpu())
        labels_seen.append(labels[:take].cpu())
        seen += take
        if seen >= max_samples:
            break
    if seen == 0:
        raise ValueError("The teacher check got no examples: the dataset it reads is empty.")
    as_fed = next(iter(feeds))
    hit = {name: torch.cat(values) for name, values in hits.items()}
    result = TeacherCheckResult(seen, num_classes, float(hit[as_fed].float().mean()))
    for name in list(feeds)[1:]:
        result.alternatives[name] = float(hit[name].float().mean())
        if _mcnemar_better(hit[name], hit[as_fed]):
            result.better.append(name)
    labels_all = torch.cat(labels_seen).long()
    if seen >= 5 * num_classes:
        relabelled = _relabelled_top1(torch.cat(predicted).long(), labels_all, num_classes)
        n = seen
        if relabelled - result.top1 > 0.25 and relabelled * n > n / num_classes + 3 * math.sqrt(n) + 1:
            result.relabelled_top1 = relabelled
    return result
