"""Tests of the CIFAR benchmark architectures (hf_projkd.models): shapes, sizes, Hub round trips, accuracy."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import SHARED

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoConfig, AutoModelForImageClassification  # noqa: E402
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention  # noqa: E402

from hf_projkd.models import (  # noqa: E402
    CIFAR10_CLASSES,
    CIFAR_ARCHITECTURES,
    CifarNetConfig,
    CifarNetForImageClassification,
    create_cifar_model,
    load_cifar10_resnet,
)

CIFAR10_WEIGHTS = SHARED / "weights" / "cifar10-resnet"
CIFAR10_TEST = SHARED / "data" / "cifar10-jpeg" / "test-00000-of-00001.parquet"
MODELING_FILE = Path(__file__).resolve().parents[1] / "hf_projkd" / "models" / "modeling_cifar.py"

# Parameter counts for 100 classes of the published RepDistiller definitions (HobbitLong/RepDistiller,
# models/), counted layer by layer; the commonly quoted rounded sizes are in the comments.
PUBLISHED_PARAMS: dict[str, int] = {
    "resnet8": 83_892,  # 0.08M
    "resnet14": 181_108,  # 0.18M
    "resnet20": 278_324,  # 0.28M
    "resnet32": 472_756,  # 0.47M
    "resnet44": 667_188,  # 0.67M
    "resnet56": 861_620,  # 0.86M
    "resnet110": 1_736_564,  # 1.74M
    "resnet8x4": 1_233_540,  # 1.23M
    "resnet32x4": 7_433_860,  # 7.43M
    "resnet50": 23_705_252,  # 23.71M
    "wrn_16_2": 703_284,  # 0.70M
    "wrn_40_1": 569_780,  # 0.57M
    "wrn_40_2": 2_255_156,  # 2.26M
    "vgg8": 3_965_028,  # 3.96M
    "vgg13": 9_462_180,  # 9.46M
    "mobilenetv2": 812_836,  # 0.81M
    "shufflev1": 949_258,  # 0.95M
    "shufflev2": 1_355_528,  # 1.36M
}

# Measured top-1 (%) of the shared CIFAR-10 ResNets on the JPEG test split (see shared/weights/README.md).
EXPECTED_TOP1: dict[str, float] = {"resnet20": 81.03, "resnet56": 83.20}

ROUND_TRIP_ARCHITECTURES: tuple[tuple[str, dict], ...] = (
    ("resnet20", {"shortcut": "A"}),
    ("resnet8x4", {}),
    ("wrn_16_2", {}),
    ("shufflev2", {}),
)


def _randomised_model(architecture: str, num_labels: int = 10, **kwargs) -> CifarNetForImageClassification:
    """A model whose BN running statistics differ from their defaults, so round trips must carry buffers."""
    torch.manual_seed(0)
    model = create_cifar_model(architecture, num_labels=num_labels, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_every_architecture_has_a_published_count() -> None:
    assert set(PUBLISHED_PARAMS) == set(CIFAR_ARCHITECTURES)


@pytest.mark.parametrize("architecture", CIFAR_ARCHITECTURES)
def test_architecture_builds_with_published_size(architecture: str, batch: torch.Tensor) -> None:
    model = create_cifar_model(architecture, num_labels=100).eval()
    with torch.no_grad():
        out = model(batch, output_hidden_states=True)
    assert isinstance(out, ImageClassifierOutputWithNoAttention)
    assert out.logits.shape == (2, 100)
    assert isinstance(model.classifier, torch.nn.Linear)
    assert model.classifier.in_features == model.num_features
    assert out.hidden_states[-1].shape[:2] == (2, model.num_features)
    n_params = sum(p.numel() for p in model.parameters())
    published = PUBLISHED_PARAMS[architecture]
    assert abs(n_params - published) <= 0.01 * published, f"{architecture}: {n_params} vs published {published}"


def test_classifier_input_is_the_pooled_feature(batch: torch.Tensor) -> None:
    model = create_cifar_model("wrn_16_2", num_labels=7).eval()
    captured: list[torch.Tensor] = []
    handle = model.classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.no_grad():
        out = model(batch, output_hidden_states=True)
    handle.remove()
    assert captured[0].shape == (2, model.num_features)
    torch.testing.assert_close(captured[0], out.hidden_states[-1].mean(dim=(2, 3)))


def test_loss_and_tuple_output(batch: torch.Tensor) -> None:
    model = create_cifar_model("resnet8", num_labels=10).eval()
    labels = torch.tensor([3, 7])
    out = model(batch, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    loss, logits = model(batch, labels=labels, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    assert model(batch).loss is None


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="resnet8x4.*shufflev2"):
        CifarNetConfig(architecture="resnet9000")
    with pytest.raises(ValueError, match="only defined for the CIFAR basic-block ResNets"):
        CifarNetConfig(architecture="vgg13", shortcut="A")
    with pytest.raises(ValueError, match="shortcut"):
        CifarNetConfig(architecture="resnet20", shortcut="C")
    config = CifarNetConfig(architecture="ShuffleV1")
    assert config.architecture == "shufflev1"
    assert config.num_labels == 100
    assert config.image_mean == pytest.approx([0.5071, 0.4867, 0.4408])
    assert config.image_std == pytest.approx([0.2675, 0.2565, 0.2761])


def test_option_a_shortcut_has_no_parameters(batch: torch.Tensor) -> None:
    assert create_cifar_model("resnet8x4", shortcut="A")(batch).logits.shape == (2, 100)
    with_a = create_cifar_model("resnet20", shortcut="A")
    with_b = create_cifar_model("resnet20", shortcut="B")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Option B adds two 1x1 conv + BN projections (16->32 and 32->64).
    assert count(with_b) - count(with_a) == (16 * 32 + 64) + (32 * 64 + 128)


def test_modeling_file_is_self_contained() -> None:
    """The code copied next to checkpoints may import only torch, transformers and the config module."""
    allowed = {"__future__", "typing", "torch", "transformers"}
    tree = ast.parse(MODELING_FILE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
            assert roots <= allowed, roots
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.module == "configuration_cifar", node.module
            else:
                assert node.module.split(".")[0] in allowed, node.module


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory, batch: torch.Tensor) -> dict[str, tuple[Path, Path]]:
    """Save a few models with save_pretrained; return folder and reference-logits file per architecture."""
    root = tmp_path_factory.mktemp("cifar_round_trip")
    torch.save(batch, root / "batch.pt")
    saved = {}
    for architecture, kwargs in ROUND_TRIP_ARCHITECTURES:
        model = _randomised_model(architecture, **kwargs)
        folder = root / architecture
        model.save_pretrained(folder)
        with torch.no_grad():
            torch.save(model(batch).logits, root / f"{architecture}_logits.pt")
        saved[architecture] = (folder, root / f"{architecture}_logits.pt")
    return saved


def test_save_and_auto_load_in_process(saved_models: dict[str, tuple[Path, Path]], batch: torch.Tensor) -> None:
    for architecture, (folder, logits_file) in saved_models.items():
        assert {"configuration_cifar.py", "modeling_cifar.py", "config.json"} <= {p.name for p in folder.iterdir()}
        assert AutoConfig.from_pretrained(folder).architecture == architecture
        loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
        assert isinstance(loaded, CifarNetForImageClassification)
        with torch.no_grad():
            assert torch.equal(loaded(batch).logits, torch.load(logits_file)), architecture


def test_remote_code_load_without_hf_projkd(saved_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """A fresh interpreter that never imports hf_projkd loads the folders via trust_remote_code."""
    folders = {arch: (str(folder), str(logits)) for arch, (folder, logits) in saved_models.items()}
    batch_file = str(next(iter(saved_models.values()))[0].parent / "batch.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForImageClassification
        batch = torch.load({batch_file!r})
        for arch, (folder, logits) in {folders!r}.items():
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__name__ == "CifarNetForImageClassification", type(model)
            with torch.no_grad():
                assert torch.equal(model(batch).logits, torch.load(logits)), arch
        assert not any(name.split(".")[0] == "hf_projkd" for name in sys.modules), "hf_projkd was imported"
        print("remote-ok", type(model).__module__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "remote-ok transformers_modules" in result.stdout


# ------------------------------------------------------------------------ pretrained CIFAR-10 ResNets
requires_shared = pytest.mark.skipif(
    not (CIFAR10_WEIGHTS.is_dir() and CIFAR10_TEST.is_file()),
    reason=f"shared CIFAR-10 weights/data not found under {SHARED} (expected weights/cifar10-resnet and "
    "data/cifar10-jpeg/test-00000-of-00001.parquet)",
)


@pytest.fixture(scope="module")
def cifar10_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The CIFAR-10 JPEG test split as a uint8 (N, 3, 32, 32) tensor and int64 labels."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(CIFAR10_TEST, columns=["img", "label"])
    images = [
        np.asarray(Image.open(io.BytesIO(item["bytes"])).convert("RGB")) for item in table.column("img").to_pylist()
    ]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.tensor(table.column("label").to_pylist())


def _top1(model: CifarNetForImageClassification, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) with inputs scaled to [0, 1] and normalised with the model's config statistics."""
    mean = torch.tensor(model.config.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, -1, 1, 1)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 500):
            x = (pixels[start : start + 500].float() / 255.0 - mean) / std
            correct += (model(x).logits.argmax(dim=1) == labels[start : start + 500]).sum().item()
    return 100.0 * correct / len(labels)


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_pretrained_cifar10_resnet_accuracy(name: str, cifar10_test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = load_cifar10_resnet(CIFAR10_WEIGHTS / f"cifar10_{name}.safetensors")
    assert not model.training
    assert model.config.architecture == name and model.config.shortcut == "A"
    assert [model.config.id2label[i] for i in range(10)] == list(CIFAR10_CLASSES)
    assert model.config.image_mean == pytest.approx([0.485, 0.456, 0.406])
    assert model.config.image_std == pytest.approx([0.229, 0.224, 0.225])
    accuracy = _top1(model, *cifar10_test_set)
    assert accuracy == pytest.approx(EXPECTED_TOP1[name], abs=0.05), f"{name}: {accuracy:.2f} %"


@requires_shared
def test_load_cifar10_resnet_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_cifar10_resnet(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="folder with 2 .safetensors files"):
        load_cifar10_resnet(CIFAR10_WEIGHTS)
