"""The model-family adapters: features (before any head dropout), dims from attributes, and the rest, for every
family on tiny random-initialised models (no network)."""

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

from hf_projkd.families import adapter_for, probe_dims

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
    out = adapter_for(model)(X)
    head = _last_linear(model.classifier)
    assert out.features.shape == (2, head.in_features)
    torch.testing.assert_close(out.logits, model(X).logits)
    torch.testing.assert_close(head(out.features), out.logits)  # the features are exactly what the head saw
    adapter = adapter_for(model)
    assert (adapter.feature_dim, adapter.num_classes, adapter.input_size()) == (head.in_features, C, (3, 32, 32))
    assert probe_dims(adapter) == (head.in_features, C)


def test_deit_with_teacher_gives_both_heads_and_the_distillation_token():
    model = DeiTForImageClassificationWithTeacher(
        DeiTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=C)
    ).eval()
    embeddings = model.deit.embeddings  # transformers zero-initialises both tokens: make them tell apart
    for parameter in (embeddings.cls_token, embeddings.distillation_token, embeddings.position_embeddings):
        torch.nn.init.normal_(parameter, std=0.5)
    out = adapter_for(model)(X)
    reference = model(X)
    torch.testing.assert_close(out.class_logits, reference.cls_logits)
    torch.testing.assert_close(out.distillation_logits, reference.distillation_logits)
    torch.testing.assert_close(out.logits, (reference.cls_logits + reference.distillation_logits) / 2)
    torch.testing.assert_close(model.distillation_classifier(out.features), reference.distillation_logits)
    hidden = model.deit(X).last_hidden_state
    torch.testing.assert_close(out.features, hidden[:, 1])  # token 1 is the distillation token
    assert not torch.allclose(hidden[:, 0], hidden[:, 1])


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
    out = adapter_for(model)(X)
    torch.testing.assert_close(out.logits, model(X))
    assert out.features.shape == (2, model.head_hidden_size if hasattr(model, "head_hidden_size")
                                  else model.num_features)
    assert probe_dims(adapter_for(model)) == (out.features.shape[1], C)  # from attributes, no forward


def test_timm_distilled_deit_gives_class_and_distillation_heads():
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=C, img_size=32, patch_size=8, depth=1
    ).eval()
    out = adapter_for(model)(X)
    torch.testing.assert_close(out.logits, model(X))  # eval: average of both heads
    tokens = model.forward_features(X)
    torch.testing.assert_close(out.features, tokens[:, 1])
    torch.testing.assert_close(out.distillation_logits, model.head_dist(tokens[:, 1]))


def test_timm_wrapper_uses_the_wrapped_timm_model():
    model = TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="resnet10t", num_labels=C, num_classes=C, do_pooling=True)
    ).eval()
    out = adapter_for(model)(X)
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
    out = adapter_for(model, feature_module="body")(X)
    assert out.features.shape == (2, 12)
    torch.testing.assert_close(model.fc(out.features), out.logits)
    assert probe_dims(adapter_for(model, "body"), (3, 32, 32)) == (12, C)  # a dummy forward: no attribute says


def test_errors_name_the_model_and_the_fix():
    with pytest.raises(ValueError, match="feature_module="):
        adapter_for(PlainNet())
    with pytest.raises(ValueError, match="not a submodule.*Similar names"):
        adapter_for(PlainNet(), feature_module="bdy")
    with pytest.raises(ValueError, match="input_size"):
        probe_dims(adapter_for(PlainNet(), "body"))
    with pytest.raises(ValueError, match="A dummy forward of PlainNet"):
        probe_dims(adapter_for(PlainNet(), "body"), (1, 32, 32))


# -- features before the head's dropout (the paper's pooled pre-logit features) -------------------------------
DROPOUT_MODELS = {
    "transformers mobilenet_v2 (dropout 0.8)": lambda: MobileNetV2ForImageClassification(  # features ~1, not 1e-27
        MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=C, classifier_dropout_prob=0.8,
                          initializer_range=0.3)
    ),
    "timm resnet (functional drop_rate)": lambda: timm.create_model("resnet10t", num_classes=C, drop_rate=0.5),
    "timm vit (head_drop module)": lambda: timm.create_model(
        "vit_tiny_patch16_224", num_classes=C, img_size=32, patch_size=8, depth=1, drop_rate=0.5),
    "timm regnet (ClassifierHead.drop)": lambda: timm.create_model("regnety_002", num_classes=C, drop_rate=0.5),
}


@pytest.mark.parametrize("name", sorted(DROPOUT_MODELS))
def test_features_are_read_before_the_head_dropout_and_the_logits_after_it(name):
    torch.manual_seed(0)
    model = DROPOUT_MODELS[name]().train()
    for module in model.modules():  # only the head's dropout stays random: batch norm uses its running stats
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    adapter = adapter_for(model)
    torch.manual_seed(1)
    first = adapter(X)
    torch.manual_seed(2)
    second = adapter(X)
    torch.testing.assert_close(first.features, second.features)  # no dropout on the features
    assert not torch.equal(first.logits, second.logits)  # the dropout still acts on the logits
    model.eval()
    reference = adapter(X)
    # the same features as at inference
    torch.testing.assert_close(first.features, reference.features, rtol=1e-4, atol=1e-5)
    logits = model(X)
    torch.testing.assert_close(reference.logits, logits if isinstance(logits, torch.Tensor) else logits.logits)


def test_adapters_read_names_statistics_and_no_decay_parameters():
    vit = TRANSFORMERS_MODELS["deit"]()
    adapter = adapter_for(vit)
    assert adapter.label_names() is None  # LABEL_0 ... only
    vit.config.id2label = {i: f"class {i}" for i in range(C)}
    assert adapter.label_names() == [f"class {i}" for i in range(C)]
    assert adapter.input_normalization() is None  # a transformers config rarely says
    no_decay = adapter.no_decay_names()
    assert "deit.embeddings.cls_token" in no_decay and "deit.embeddings.position_embeddings" in no_decay
    assert all(vit.get_parameter(n).ndim <= 1 or n.split(".")[-1].endswith(("token", "embeddings"))
               for n in no_decay)
    timm_vit = timm.create_model("vit_tiny_patch16_224", num_classes=C, img_size=32, patch_size=8, depth=1)
    declared = adapter_for(timm_vit).input_normalization()
    assert declared.assumed and declared.source == "timm pretrained_cfg"  # the default weights' statistics
    assert {"pos_embed", "cls_token"} <= adapter_for(timm_vit).no_decay_names()
    assert adapter_for(timm_vit).input_size() == (3, 32, 32)
