"""Feature extraction for every model family, on tiny random-initialised models (no network)."""

import pytest
import timm
import torch
from torch import nn
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_projkd.features import FeatureExtractor, probe_dims

C = 5
X = torch.randn(2, 3, 32, 32)


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


TRANSFORMERS_MODELS = {
    "resnet": lambda: ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=C, image_size=32)
    ),
    "convnext": lambda: ConvNextForImageClassification(
        ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=C, image_size=32)
    ),
    "vit": lambda: ViTForImageClassification(
        ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, num_labels=C)
    ),
    "deit": lambda: DeiTForImageClassification(
        DeiTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=C)
    ),
    "swin": lambda: SwinForImageClassification(
        SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
                   num_labels=C)
    ),
    "mobilenet_v2": lambda: MobileNetV2ForImageClassification(
        MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=C)
    ),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_MODELS))
def test_transformers_classifiers_give_the_input_of_their_head(name):
    model = TRANSFORMERS_MODELS[name]().eval()
    out = FeatureExtractor(model)(X)
    head = _last_linear(model.classifier)
    assert out.features.shape == (2, head.in_features)
    torch.testing.assert_close(out.logits, model(X).logits)
    torch.testing.assert_close(head(out.features), out.logits)  # the features are exactly what the head saw
    dim, classes, size = probe_dims(FeatureExtractor(model))
    assert (dim, classes, size) == (head.in_features, C, (3, 32, 32))


def test_deit_with_teacher_gives_both_heads_and_the_distillation_token():
    model = DeiTForImageClassificationWithTeacher(
        DeiTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=C)
    ).eval()
    out = FeatureExtractor(model)(X)
    reference = model(X)
    torch.testing.assert_close(out.class_logits, reference.cls_logits)
    torch.testing.assert_close(out.distillation_logits, reference.distillation_logits)
    torch.testing.assert_close(out.logits, (reference.cls_logits + reference.distillation_logits) / 2)
    torch.testing.assert_close(model.distillation_classifier(out.features), reference.distillation_logits)
    hidden = model.deit(X).last_hidden_state
    torch.testing.assert_close(out.features, hidden[:, 1])  # token 1 is the distillation token


TIMM_MODELS = {
    "resnet10t": dict(),
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, depth=1),
    "convnext_atto": dict(),
    "regnety_002": dict(),
    "mobilenetv3_small_050": dict(),
}


@pytest.mark.parametrize("name", sorted(TIMM_MODELS))
def test_timm_classifiers_give_pre_logits(name):
    model = timm.create_model(name, num_classes=C, pretrained=False, **TIMM_MODELS[name]).eval()
    out = FeatureExtractor(model)(X)
    torch.testing.assert_close(out.logits, model(X))
    assert out.features.shape == (2, model.head_hidden_size if hasattr(model, "head_hidden_size")
                                  else model.num_features)
    dim, classes, _ = probe_dims(FeatureExtractor(model), (3, 32, 32))
    assert (dim, classes) == (out.features.shape[1], C)


def test_timm_distilled_deit_gives_class_and_distillation_heads():
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=C, img_size=32, patch_size=8, depth=1
    ).eval()
    out = FeatureExtractor(model)(X)
    torch.testing.assert_close(out.logits, model(X))  # eval: average of both heads
    tokens = model.forward_features(X)
    torch.testing.assert_close(out.features, tokens[:, 1])
    torch.testing.assert_close(out.distillation_logits, model.head_dist(tokens[:, 1]))


def test_timm_wrapper_uses_the_wrapped_timm_model():
    model = TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="resnet10t", num_labels=C, num_classes=C, do_pooling=True)
    ).eval()
    out = FeatureExtractor(model)(X)
    torch.testing.assert_close(out.logits, model(X).logits)
    assert out.features.shape == (2, model.timm_model.num_features)


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(12, C)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_any_module_with_a_named_feature_module_is_pooled():
    model = PlainNet()
    out = FeatureExtractor(model, feature_module="body")(X)
    assert out.features.shape == (2, 12)
    torch.testing.assert_close(model.fc(out.features), out.logits)
    assert probe_dims(FeatureExtractor(model, "body"), (3, 32, 32))[:2] == (12, C)


def test_errors_name_the_model_and_the_fix():
    with pytest.raises(ValueError, match="feature_module="):
        FeatureExtractor(PlainNet())
    with pytest.raises(ValueError, match="not a submodule.*Similar names"):
        FeatureExtractor(PlainNet(), feature_module="bdy")
    with pytest.raises(ValueError, match="input_size"):
        probe_dims(FeatureExtractor(PlainNet(), "body"))
    with pytest.raises(ValueError, match="dummy forward of PlainNet"):
        probe_dims(FeatureExtractor(PlainNet(), "body"), (1, 32, 32))
