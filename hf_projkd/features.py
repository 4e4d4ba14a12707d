"""Logits and pre-logit features from timm, transformers or any ``nn.Module``, through one call.

``FeatureExtractor(model)`` picks the right way for the model once; calling it on ``pixel_values`` returns a
``ModelFeatures`` with the logits and the (B, D) pre-logit features (the input of the classification head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelFeatures:
    """What a classifier gives the distillation losses.

    ``logits`` are the inference logits. ``class_logits`` feed the cross-entropy and ``distillation_logits``
    the logit KD term: all three are the same tensor except for DeiT-style models with a distillation token,
    whose class-token head takes the CE, distillation-token head the KD, and whose inference averages both.
    """

    logits: torch.Tensor
    features: torch.Tensor
    class_logits: torch.Tensor
    distillation_logits: torch.Tensor


def is_timm_model(model: nn.Module) -> bool:
    """timm classifiers expose ``forward_features`` / ``forward_head`` and a ``pretrained_cfg``."""
    return hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "pretrained_cfg")


def _pool(features: torch.Tensor, where: str) -> torch.Tensor:
    """(B, D) as is; (B, C, H, W) global-average-pooled; anything else is an error that says what to do."""
    if features.dim() == 2:
        return features
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    raise ValueError(
        f"Features captured at {where} have shape {tuple(features.shape)}: expected (batch, dim) or "
        "(batch, channels, height, width). Pass a feature_module whose output is pooled (e.g. the classifier's "
        "input) or a CNN stage output."
    )


def _logits_of(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"Cannot find logits in a model output of type {type(output).__name__}.")


class FeatureExtractor:
    """Runs a classifier and returns its logits and pre-logit features.

    Chosen once per model:
    - ``feature_module`` given: any ``nn.Module``; the output of that named submodule is captured with a
      forward hook (4-d outputs are average-pooled).
    - transformers ``TimmWrapperForImageClassification``: the timm path on its ``timm_model``.
    - timm: ``forward_features`` -> ``forward_head(pre_logits=True)`` -> ``get_classifier()``; distilled DeiTs
      (``head_dist``) give class/distillation token logits and the distillation-token feature.
    - transformers ``DeiTForImageClassificationWithTeacher``: the input of ``distillation_classifier``.
    - other transformers classifiers: the input of the last ``nn.Linear`` of ``model.classifier``, i.e. what
      the trained head sees (not a separately initialised pooler).

    Not an ``nn.Module`` on purpose: it only references the model, so the model's parameters are registered
    once, by whoever owns it.
    """

    def __init__(self, model: nn.Module, feature_module: str | None = None) -> None:
        self.model = model
        self._captured: torch.Tensor | None = None
        if feature_module:
            self._hook_output(feature_module)
            self._forward = self._forward_hooked
        elif hasattr(model, "timm_model") and is_timm_model(model.timm_model):
            self._forward = self._forward_timm_wrapper
        elif is_timm_model(model):
            self._forward = self._forward_timm
        elif hasattr(model, "distillation_classifier") and hasattr(model, "cls_classifier"):
            model.distillation_classifier.register_forward_pre_hook(self._capture_input)
            self._forward = self._forward_deit_with_teacher
        elif isinstance(getattr(model, "classifier", None), nn.Module):
            head = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
            if not head:
                raise ValueError(
                    f"{type(model).__name__}.classifier holds no nn.Linear (is num_labels 0?). Give the model a "
                    "classification head, or pass feature_module=<name of the module giving the features>."
                )
            head[-1].register_forward_pre_hook(self._capture_input)
            self._forward = self._forward_hooked
        else:
            raise ValueError(
                f"Cannot tell where the pre-logit features of {type(model).__name__} are: it is not a timm "
                "model, has no `classifier` head, and no feature_module was given. Pass "
                "feature_module='<submodule name>' (see model.named_modules()) for any nn.Module."
            )

    def __call__(self, pixel_values: torch.Tensor) -> ModelFeatures:
        return self._forward(pixel_values)

    # -- capture -------------------------------------------------------------------------------------------
    def _capture_input(self, module: nn.Module, args: tuple) -> None:
        self._captured = args[0]

    def _capture_output(self, module: nn.Module, args: tuple, output: object) -> None:
        self._captured = _logits_of(output) if not isinstance(output, torch.Tensor) else output

    def _hook_output(self, name: str) -> None:
        modules = dict(self.model.named_modules())
        if name not in modules:
            close = [n for n in modules if name.split(".")[-1] in n][:10]
            raise ValueError(
                f"feature_module={name!r} is not a submodule of {type(self.model).__name__}. "
                f"Similar names: {close or 'none'}; list them all with model.named_modules()."
            )
        modules[name].register_forward_hook(self._capture_output)

    def _take_captured(self, where: str) -> torch.Tensor:
        features, self._captured = self._captured, None
        if features is None:
            raise RuntimeError(f"The feature hook at {where} of {type(self.model).__name__} did not fire.")
        return _pool(features, where)

    # -- per family ----------------------------------------------------------------------------------------
    def _forward_hooked(self, pixel_values: torch.Tensor) -> ModelFeatures:
        logits = _logits_of(self.model(pixel_values))
        features = self._take_captured("the hooked module")
        return ModelFeatures(logits, features, logits, logits)

    def _forward_timm_wrapper(self, pixel_values: torch.Tensor) -> ModelFeatures:
        return _timm_features(self.model.timm_model, pixel_values)

    def _forward_timm(self, pixel_values: torch.Tensor) -> ModelFeatures:
        return _timm_features(self.model, pixel_values)

    def _forward_deit_with_teacher(self, pixel_values: torch.Tensor) -> ModelFeatures:
        output = self.model(pixel_values)
        features = self._take_captured("distillation_classifier")
        return ModelFeatures(output.logits, features, output.cls_logits, output.distillation_logits)


def _timm_features(model: nn.Module, pixel_values: torch.Tensor) -> ModelFeatures:
    tokens = model.forward_features(pixel_values)
    if hasattr(model, "head_dist"):  # distilled DeiT: class token -> head, distillation token -> head_dist
        cls_token, dist_token = tokens[:, 0], tokens[:, 1]
        class_logits, dist_logits = model.head(cls_token), model.head_dist(dist_token)
        return ModelFeatures((class_logits + dist_logits) / 2, dist_token, class_logits, dist_logits)
    features = model.forward_head(tokens, pre_logits=True)
    logits = model.get_classifier()(features)
    return ModelFeatures(logits, features, logits, logits)


def default_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) the model expects, from timm's pretrained_cfg or a transformers config, else None."""
    for candidate in (model, getattr(model, "timm_model", None)):
        patch_embed = getattr(candidate, "patch_embed", None)  # timm ViTs built with another img_size
        if getattr(patch_embed, "img_size", None) and hasattr(getattr(patch_embed, "proj", None), "in_channels"):
            return (patch_embed.proj.in_channels, *tuple(patch_embed.img_size))
        cfg = getattr(candidate, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return tuple(cfg["input_size"])
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "image_size", None):
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return (getattr(config, "num_channels", 3), height, width)
    return None


@torch.no_grad()
def probe_dims(
    extractor: FeatureExtractor, input_size: tuple[int, int, int] | None = None
) -> tuple[int, int, tuple[int, int, int]]:
    """(feature_dim, num_classes, input_size) from a dummy forward at the model's input size, in eval mode."""
    model = extractor.model
    size = input_size or default_input_size(model)
    if size is None:
        raise ValueError(
            f"Cannot infer the input size of {type(model).__name__} (no timm pretrained_cfg['input_size'] or "
            "config.image_size) to infer its feature dimension. Pass input_size=(channels, height, width), or "
            "the dims directly (student_feature_dim / teacher_feature_dim)."
        )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        out = extractor(torch.zeros(2, *size, device=device, dtype=dtype))
    except Exception as error:
        raise ValueError(
            f"A dummy forward of {type(model).__name__} at input size {size} failed ({error}), so its feature "
            "dimension cannot be inferred. Pass input_size=(channels, height, width) that the model accepts, "
            "or the dims directly (student_feature_dim / teacher_feature_dim)."
        ) from error
    finally:
        model.train(was_training)
    return out.features.shape[-1], out.logits.shape[-1], tuple(size)
