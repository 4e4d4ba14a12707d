"""One adapter per model family: everything the trainer needs to know about a classifier, in one place.

A family is a way a classifier is built: timm (including distilled DeiTs), transformers' ``TimmWrapper``,
transformers' ``DeiTForImageClassificationWithTeacher``, any other transformers classifier, or any ``nn.Module``
with a named feature module. ``adapter_for(model)`` picks the adapter once; it then answers:

- ``adapter(pixel_values)``: logits and the pooled pre-logit features, read BEFORE the head's dropout (the
  paper's features; a dropout of 0.8, as in transformers' MobileNetV2, would otherwise zero most of them);
- ``feature_dim`` / ``num_classes`` / ``input_size``: from the model's attributes (a dummy forward only as the
  fallback, ``probe_dims``);
- ``input_normalization()``: the mean/std the model declares, and where that comes from;
- ``label_names()``, ``no_decay_names()``, ``architecture``, ``library`` and ``save(folder)`` (native format).

Adding a model family means adding one adapter class here and one line to ``adapter_for``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
#: Parameters that never get weight decay under ``weight_decay_filter='no_1d'`` besides 1-d ones (DeiT/timm).
TOKEN_PARAMETER_NAMES = ("cls_token", "dist_token", "distillation_token", "pos_embed", "position_embeddings",
                         "mask_token", "reg_token")
#: timm ``pretrained_cfg`` keys that describe the architecture's default weights, not a model trained here.
_TIMM_WEIGHT_METADATA = ("tag", "license", "paper_ids", "paper_name", "hf_hub_id", "hf_hub_filename", "origin_url",
                         "notes", "source", "url", "file", "test_input_size", "test_crop_pct", "test_pool_size",
                         "label_descriptions", "label_offset")


@dataclass
class ModelFeatures:
    """What a classifier gives the distillation losses.

    ``logits`` are the inference logits. ``class_logits`` feed the cross-entropy and ``distillation_logits`` the
    logit KD term: all three are the same tensor except for DeiT-style models with a distillation token, whose
    class-token head takes the CE, distillation-token head the KD, and whose inference averages both.
    """

    logits: torch.Tensor
    features: torch.Tensor
    class_logits: torch.Tensor
    distillation_logits: torch.Tensor


@dataclass(frozen=True)
class DeclaredNormalization:
    """The (mean, std) a model declares for its inputs, where it was read, and whether it is only assumed."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    assumed: bool = False

    @property
    def values(self) -> Normalization:
        return self.mean, self.std


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


def _floats(values: object) -> tuple[float, ...]:
    return tuple(float(v) for v in values)  # type: ignore[union-attr]


def _head_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """Dropout modules outside repeated blocks (no numeric part in their name): where head dropouts live."""
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.Dropout) and name and not any(part.isdigit() for part in name.split("."))]


class ModelAdapter:
    """Base adapter: a classifier with a named feature module (any ``nn.Module``)."""

    library = "torch"

    def __init__(self, model: nn.Module, feature_module: str | None = None) -> None:
        self.model = model
        self._captured: torch.Tensor | None = None
        if feature_module is not None:
            self._hook_output(feature_module)

    # -- features ----------------------------------------------------------------------------------------------
    def __call__(self, pixel_values: torch.Tensor) -> ModelFeatures:
        logits = _logits_of(self.model(pixel_values))
        features = self._take_captured("the feature module")
        return ModelFeatures(logits, features, logits, logits)

    def _hook_output(self, name: str) -> None:
        modules = dict(self.model.named_modules())
        if name not in modules:
            close = [n for n in modules if name.split(".")[-1] in n][:10]
            raise ValueError(
                f"feature_module={name!r} is not a submodule of {type(self.model).__name__}. "
                f"Similar names: {close or 'none'}; list them all with model.named_modules()."
            )
        modules[name].register_forward_hook(self._capture_output)

    def _capture_output(self, module: nn.Module, args: tuple, output: object) -> None:
        self._captured = output if isinstance(output, torch.Tensor) else _logits_of(output)

    def _capture_input(self, module: nn.Module, args: tuple) -> None:
        self._captured = args[0]

    def _take_captured(self, where: str) -> torch.Tensor:
        features, self._captured = self._captured, None
        if features is None:
            raise RuntimeError(f"The feature hook at {where} of {type(self.model).__name__} did not fire.")
        return _pool(features, where)

    # -- what the model declares -------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int | None:
        """The pre-logit feature dim from the model's attributes; None when only a forward can tell."""
        return None

    @property
    def num_classes(self) -> int | None:
        return None

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    def input_size(self) -> tuple[int, int, int] | None:
        """(C, H, W) the model declares (timm ``pretrained_cfg`` / ``patch_embed``, transformers config)."""
        config = getattr(self.model, "config", None)
        if config is not None and getattr(config, "image_size", None):
            size = config.image_size
            height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
            return (getattr(config, "num_channels", 3), height, width)
        return None

    def input_normalization(self) -> DeclaredNormalization | None:
        """(mean, std) from a transformers config (``image_mean`` / ``image_std``), else None."""
        return _config_normalization(self.model)

    def label_names(self) -> list[str] | None:
        """Class names in logit order, or None when the model has none (or only ``LABEL_<i>``)."""
        return _config_label_names(self.model)

    def no_decay_names(self) -> set[str]:
        """Parameter names (relative to the model) that get no weight decay under ``no_1d``."""
        return {name for name, p in self.model.named_parameters()
                if p.ndim <= 1 or name.split(".")[-1] in TOKEN_PARAMETER_NAMES}

    # -- saving ------------------------------------------------------------------------------------------------
    def save(self, output_dir: str | Path) -> None:
        """Write the model alone: ``model.safetensors`` (its state dict)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, output_dir / "model.safetensors", metadata={"format": "pt"})


def _meaningful(names: list[str]) -> list[str] | None:
    if not names or all(_DEFAULT_LABEL.match(name) for name in names):
        return None
    return names


def _config_normalization(model: nn.Module) -> DeclaredNormalization | None:
    config = getattr(model, "config", None)
    mean, std = getattr(config, "image_mean", None), getattr(config, "image_std", None)
    if mean is not None and std is not None:
        return DeclaredNormalization(_floats(mean), _floats(std), f"{type(model).__name__}.config")
    return None


def _config_label_names(model: nn.Module) -> list[str] | None:
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    return _meaningful([str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else [])


class TransformersAdapter(ModelAdapter):
    """transformers classifiers (and any module with a ``classifier`` head): the features are the input of the last
    ``nn.Linear`` of ``model.classifier`` (what the trained head sees), taken before a dropout that feeds it
    (MobileNetV2, EfficientNet)."""

    @property
    def library(self) -> str:  # type: ignore[override]
        return "transformers" if isinstance(self.model, PreTrainedModel) else "torch"

    def __init__(self, model: nn.Module, feature_module: str | None = None) -> None:
        super().__init__(model, feature_module)
        self._hooked = feature_module is not None
        if self._hooked:
            return
        head = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
        if not head:
            raise ValueError(
                f"{type(model).__name__}.classifier holds no nn.Linear (is num_labels 0?). Give the model a "
                "classification head, or pass feature_module=<name of the module giving the features>."
            )
        self.head = head[-1]
        self.head.register_forward_pre_hook(self._capture_input)
        self._dropped: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inputs: dict[int, torch.Tensor] = {}
        for dropout in _head_dropouts(model):
            dropout.register_forward_pre_hook(self._keep_dropout_input)
            dropout.register_forward_hook(self._remember_dropout)

    def _keep_dropout_input(self, module: nn.Module, args: tuple) -> None:
        # an in-place dropout (MobileNetV2's) overwrites its input: keep a copy of it (B x D, cheap)
        inplace = getattr(module, "inplace", False) and module.training
        self._inputs[id(module)] = args[0].clone() if inplace else args[0]

    def _remember_dropout(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # the output is kept so that its id cannot be reused while the forward runs
        self._dropped[id(output)] = (output, self._inputs.pop(id(module), args[0]))

    def __call__(self, pixel_values: torch.Tensor) -> ModelFeatures:
        self._dropped = {}
        logits = _logits_of(self.model(pixel_values))
        if self._hooked:
            features = self._take_captured("the feature module")
        else:
            # the head's input came out of a dropout: the features are that dropout's input
            dropped = self._dropped.get(id(self._captured))
            if dropped is not None and dropped[0] is self._captured:
                self._captured = dropped[1]
            features = self._take_captured("the classifier's input")
        self._dropped, self._inputs = {}, {}
        return ModelFeatures(logits, features, logits, logits)

    @property
    def feature_dim(self) -> int | None:
        return None if self._hooked else self.head.in_features

    @property
    def num_classes(self) -> int | None:
        return self.head.out_features if not self._hooked else getattr(self.model.config, "num_labels", None)

    def save(self, output_dir: str | Path) -> None:
        if isinstance(self.model, PreTrainedModel):
            self.model.save_pretrained(output_dir)
        else:
            super().save(output_dir)


class DeiTWithTeacherAdapter(TransformersAdapter):
    """transformers ``DeiTForImageClassificationWithTeacher``: CE on the class-token head, KD on the
    distillation-token head, whose input (the distillation token) is the feature; inference averages both."""

    def __init__(self, model: nn.Module, feature_module: str | None = None) -> None:
        ModelAdapter.__init__(self, model, feature_module)
        self._hooked = False
        self.head = model.distillation_classifier
        self.head.register_forward_pre_hook(self._capture_input)

    def __call__(self, pixel_values: torch.Tensor) -> ModelFeatures:
        output = self.model(pixel_values)
        features = self._take_captured("distillation_classifier")
        return ModelFeatures(output.logits, features, output.cls_logits, output.distillation_logits)


class TimmAdapter(ModelAdapter):
    """timm classifiers: ``forward_features`` -> ``forward_head(pre_logits=True)`` with the head's dropout held
    off, then the dropout and ``get_classifier()``; distilled DeiTs (``head_dist``) give both token heads."""

    @property
    def library(self) -> str:  # type: ignore[override]
        """The library the saved folder is for: timm's format, or transformers' for a ``TimmWrapper``."""
        return "timm" if self.owner is self.model else "transformers"

    def __init__(self, model: nn.Module, feature_module: str | None = None, owner: nn.Module | None = None) -> None:
        super().__init__(model, None)
        if feature_module is not None:
            raise ValueError(
                "feature_module is for models of no known family; a timm model's pre-logit features are read by "
                "its own forward_head(pre_logits=True). Remove student_feature_module / teacher_feature_module."
            )
        self.owner = owner if owner is not None else model  # the module that is saved (TimmWrapper or timm)
        self._dropouts = _head_dropouts(model)
        self._ran: set[int] = set()
        for dropout in self._dropouts:
            dropout.register_forward_hook(lambda module, args, output: self._ran.add(id(module)))

    def __call__(self, pixel_values: torch.Tensor) -> ModelFeatures:
        model = self.model
        tokens = model.forward_features(pixel_values)
        if hasattr(model, "head_dist"):  # distilled DeiT: class token -> head, distillation token -> head_dist
            cls_token, dist_token = tokens[:, 0], tokens[:, 1]
            class_logits, dist_logits = model.head(cls_token), model.head_dist(dist_token)
            return ModelFeatures((class_logits + dist_logits) / 2, dist_token, class_logits, dist_logits)
        with self._head_dropout_held_off() as rate:
            features = model.forward_head(tokens, pre_logits=True)
        dropped = features
        if model.training and rate() > 0:
            dropped = F.dropout(features, p=rate(), training=True)
        logits = model.get_classifier()(dropped)
        return ModelFeatures(logits, features, logits, logits)

    @contextmanager
    def _head_dropout_held_off(self) -> Iterator:
        """Run ``forward_head`` without its dropout; yields a callable giving the rate it would have used.

        timm applies the head dropout either through a module (``head_drop``, ``head.drop``) or functionally with
        ``self.drop_rate`` (ResNet, EfficientNet); both are switched off for the call, and it is always the last
        operation before the classifier, so the caller re-applies it on the logit path only.
        """
        model = self.model
        functional = float(getattr(model, "drop_rate", 0.0) or 0.0)
        saved = [dropout.p for dropout in self._dropouts]
        self._ran = set()
        if functional:
            model.drop_rate = 0.0
        for dropout in self._dropouts:
            dropout.p = 0.0
        try:
            yield lambda: max([functional] + [p for d, p in zip(self._dropouts, saved, strict=True)
                                             if id(d) in self._ran])
        finally:
            if functional:
                model.drop_rate = functional
            for dropout, p in zip(self._dropouts, saved, strict=True):
                dropout.p = p

    @property
    def feature_dim(self) -> int | None:
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    @property
    def num_classes(self) -> int | None:
        return int(self.model.num_classes)

    @property
    def architecture(self) -> str:
        return str(self.model.pretrained_cfg.get("architecture") or type(self.model).__name__)

    def input_size(self) -> tuple[int, int, int] | None:
        patch_embed = getattr(self.model, "patch_embed", None)  # timm ViTs built with another img_size
        if getattr(patch_embed, "img_size", None) and hasattr(getattr(patch_embed, "proj", None), "in_channels"):
            return (patch_embed.proj.in_channels, *tuple(patch_embed.img_size))
        size = self.model.pretrained_cfg.get("input_size")
        return tuple(size) if size else None

    def input_normalization(self) -> DeclaredNormalization | None:
        """timm records the statistics of the architecture's default pretrained weights in ``pretrained_cfg``
        even for a randomly initialised model: for a teacher (pretrained) they are right, for a student they are
        only an assumption, which the trainer's teacher check tests against the data."""
        declared = _config_normalization(self.owner) if self.owner is not self.model else None
        if declared is not None:
            return declared
        cfg = self.model.pretrained_cfg
        if cfg.get("mean") is not None and cfg.get("std") is not None:
            return DeclaredNormalization(_floats(cfg["mean"]), _floats(cfg["std"]), "timm pretrained_cfg",
                                         assumed=True)
        return None

    def label_names(self) -> list[str] | None:
        names = _config_label_names(self.owner) if self.owner is not self.model else None
        if names is not None:
            return names
        return _meaningful([str(n) for n in (self.model.pretrained_cfg.get("label_names") or [])])

    def no_decay_names(self) -> set[str]:
        declared = set(getattr(self.model, "no_weight_decay", lambda: set())())
        names = {n for n, p in self.model.named_parameters() if p.ndim <= 1 or n in declared}
        prefix = "timm_model." if self.owner is not self.model else ""
        return {prefix + n for n in names}

    def save(self, output_dir: str | Path) -> None:
        if self.owner is not self.model:  # TimmWrapper: transformers' own format
            self.owner.save_pretrained(output_dir)
            return
        save_timm(self.model, output_dir, self.label_names())


def save_timm(model: nn.Module, output_dir: str | Path, label_names: list[str] | None = None) -> None:
    """timm's Hub format (``config.json`` + ``model.safetensors``), loadable by ``timm.create_model`` and
    transformers' ``TimmWrapperForImageClassification``, describing THIS model:

    - ``model_args.num_classes`` is dropped (the root ``num_classes`` says it, and TimmWrapper fails on both);
    - the class names are written at the root (``label_names``, which TimmWrapper reads) and in ``pretrained_cfg``;
    - metadata of the architecture's default weights (tag, license, papers, test sizes) is removed.
    """
    from timm.models import save_for_hf

    output_dir = Path(output_dir)
    save_for_hf(model, str(output_dir), safe_serialization=True,
                model_config={"label_names": list(label_names)} if label_names else None)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    cfg = config.get("pretrained_cfg", {})
    for key in _TIMM_WEIGHT_METADATA:
        cfg.pop(key, None)
    if label_names:
        cfg["label_names"] = list(label_names)
    config_path.write_text(json.dumps(config, indent=2))


def adapter_for(model: nn.Module, feature_module: str | None = None) -> ModelAdapter:
    """The adapter of ``model``'s family (see the module docstring); ``feature_module`` names the submodule
    whose output is the feature, for models of no known family."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and is_timm_model(timm_model):
        return TimmAdapter(timm_model, feature_module, owner=model)
    if is_timm_model(model):
        return TimmAdapter(model, feature_module)
    if hasattr(model, "distillation_classifier") and hasattr(model, "cls_classifier") and feature_module is None:
        return DeiTWithTeacherAdapter(model)
    if isinstance(getattr(model, "classifier", None), nn.Module):
        return TransformersAdapter(model, feature_module)
    if feature_module is None:
        raise ValueError(
            f"Cannot tell where the pre-logit features of {type(model).__name__} are: it is not a timm model, has "
            "no `classifier` head (as transformers classifiers do), and no feature_module was given. Pass "
            "student_feature_module / teacher_feature_module='<submodule name>' (see model.named_modules())."
        )
    return ModelAdapter(model, feature_module)


@torch.no_grad()
def probe_dims(adapter: ModelAdapter, input_size: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """(feature_dim, num_classes): from the model's attributes, else from one dummy forward in eval mode."""
    if adapter.feature_dim is not None and adapter.num_classes is not None:
        return adapter.feature_dim, adapter.num_classes
    model = adapter.model
    size = input_size or adapter.input_size()
    if size is None:
        raise ValueError(
            f"Cannot infer the feature dimension of {type(model).__name__}: it has no attribute giving it and no "
            "declared input size (timm pretrained_cfg['input_size'] or config.image_size) for a dummy forward. "
            "Pass input_size=(channels, height, width), or the dims directly (student_feature_dim / "
            "teacher_feature_dim)."
        )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        out = adapter(torch.zeros(2, *size, device=device, dtype=dtype))
    except Exception as error:
        raise ValueError(
            f"A dummy forward of {type(model).__name__} at input size {tuple(size)} failed ({error}), so its feature "
            "dimension cannot be inferred. Pass input_size=(channels, height, width) that the model accepts, or "
            "the dims directly (student_feature_dim / teacher_feature_dim)."
        ) from error
    finally:
        model.train(was_training)
    return out.features.shape[-1], out.logits.shape[-1]


def normalization_of(source: object) -> Normalization | None:
    """(mean, std) from an image processor or collator (``image_mean``/``image_std``, or ``mean``/``std``)."""
    if source is None:
        return None
    get = source.get if isinstance(source, Mapping) else lambda key: getattr(source, key, None)
    mean = get("image_mean") if get("image_mean") is not None else get("mean")
    std = get("image_std") if get("image_std") is not None else get("std")
    if mean is None or std is None or isinstance(mean, torch.Tensor) and mean.numel() == 0:
        return None
    try:
        return _floats(torch.as_tensor(mean).flatten().tolist()), _floats(torch.as_tensor(std).flatten().tolist())
    except (TypeError, ValueError):
        return None
