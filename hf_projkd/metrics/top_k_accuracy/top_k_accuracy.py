"""Top-k accuracy as an ``evaluate`` metric that ships with hf_projkd, so evaluation needs no download.

    import evaluate
    from hf_projkd.metrics import TOP_K_ACCURACY_PATH
    metric = evaluate.load(TOP_K_ACCURACY_PATH)          # or hf_projkd.metrics.load_top_k_accuracy()
    metric.compute(predictions=logits.topk(5).indices, references=labels)   # {"top1": ..., "top5": ...}

Predictions are each sample's highest-scoring classes, best first (``logits.topk(k).indices``): ranked class ids
rather than full score vectors keep the Arrow conversion of ImageNet-sized evaluations to milliseconds.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-k accuracy: the share of samples whose reference class is among the model's k highest-scoring
classes. Computed for every k in `k` (default 1 and 5) from ranked predictions."""

_CITATION = """@misc{hf_projkd_top_k_accuracy,
  title  = {Top-k accuracy metric of hf_projkd},
  note   = {Standard top-k classification accuracy, as reported for ImageNet since Krizhevsky et al. (2012)},
}"""

_INPUTS = """
Args:
    predictions (`list` of `list` of `int`): each sample's classes ranked by decreasing score, at least max(k) of
        them (e.g. `logits.topk(5).indices`).
    references (`list` of `int`): each sample's class index.
    k (`tuple` of `int`, defaults to (1, 5)): the k values to report; k larger than the ranked lists is an error.
Returns:
    `dict`: `top{k}` for each k, in [0, 1].
Examples:
    >>> metric.compute(predictions=[[2, 0], [1, 2]], references=[0, 1], k=(1, 2))
    {'top1': 0.5, 'top2': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy from ranked class predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Evaluation_measures_(information_retrieval)"],
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ranked = np.asarray(predictions, dtype=np.int64)
        labels = np.asarray(references, dtype=np.int64)
        if ranked.ndim != 2 or ranked.shape[0] != labels.shape[0]:
            raise ValueError(f"Expected (N, k) ranked predictions and N references, got {ranked.shape} and "
                             f"{labels.shape}.")
        results = {}
        for value in k:
            if value > ranked.shape[1]:
                raise ValueError(f"top{value} needs at least {value} ranked classes per sample, got {ranked.shape[1]}.")
            results[f"top{value}"] = float((ranked[:, :value] == labels[:, None]).any(axis=1).mean())
        return results
