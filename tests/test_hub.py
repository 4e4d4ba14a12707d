"""Model card rendering and the student-only Hub push (everything up to the upload call, which is mocked)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from conftest import make_args, random_image_dataset, tiny_timm_resnet, tiny_timm_vit, tiny_vit
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file
from transformers import ViTImageProcessor

from hf_projkd import DistillationTrainer
from hf_projkd.hub import HUB_UPLOAD_DIRNAME, CardInfo, MeasuredResult, build_model_card, count_macs


def _info(**overrides) -> CardInfo:
    values = dict(
        model_id="someone/deit-tiny-srd", library_name="transformers",
        student_architecture="DeiTForImageClassificationWithTeacher", teacher_name="timm/regnety_160.deit_in1k",
        dataset_id="ILSVRC/imagenet-1k", dataset_split="validation", input_size=224,
        results=[MeasuredResult("student (this model)", 71.234, 90.5, "evaluated at the end of this run"),
                 MeasuredResult("teacher (timm/regnety_160.deit_in1k)", 82.61, None, "evaluated by this run")],
        hyperparameters={"feature_loss": "logsum", "logsum_exponent": 4.0, "feature_loss_weight": 2.0,
                         "projector": "linear", "feature_norm": "batchnorm", "temperature": 1.0},
        costs={"student": (5_717_416, 1_256_000_000), "teacher": (83_590_140, 15_930_000_000)},
        eval_examples=50000, usage_snippet="model = DeiTForImageClassificationWithTeacher.from_pretrained(...)",
    )
    values.update(overrides)
    return CardInfo(**values)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_parses_as_hub_metadata_with_the_measured_numbers_only():
    card = ModelCard(str(build_model_card(_info())))  # re-parse the rendered text, as the Hub would
    metadata = _front_matter(str(card))
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    assert "knowledge-distillation" in metadata["tags"] and metadata["datasets"] == ["ILSVRC/imagenet-1k"]
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "deit-tiny-srd"
    assert {(r.metric_type, r.metric_value, r.dataset_split) for r in results} == {
        ("accuracy", 71.23, "validation"), ("top_5_accuracy", 90.5, "validation")}
    assert card.data.eval_results[0].dataset_type == "ILSVRC/imagenet-1k"

    body = card.text
    assert "`timm/regnety_160.deit_in1k`" in body and "82.61 | not measured" in body
    assert "| `logsum_exponent` | `4.0` |" in body and "| `projector` | `linear` |" in body
    assert "| student | 5.72 | 1.256 |" in body and "| teacher | 83.59 | 15.930 |" in body
    assert "from_pretrained" in body and "Miles, Roy and Mikolajczyk, Krystian" in body
    assert "(50000 images)" in body and "average of the class-token and distillation-token heads" in body


def test_card_without_measurements_states_no_numbers():
    info = _info(results=[], dataset_id="/data/my-images", library_name="timm", costs={})
    card = build_model_card(info)
    metadata = _front_matter(str(card))
    assert "model-index" not in metadata and "datasets" not in metadata  # a local folder is not a Hub dataset
    assert "timm" in metadata["tags"]
    results_section = card.text.split("## Results")[1].split("## Cost")[0]
    assert not any(ch.isdigit() for ch in results_section.split("|---|")[1])


def test_count_macs_of_a_linear_layer_and_of_attention():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    assert count_macs(model, (3, 4, 4)) == 48 * 10
    sdpa, eager = tiny_vit(), tiny_vit()
    eager.config._attn_implementation = "eager"  # explicit matmuls: the reference count
    assert count_macs(sdpa, (3, 32, 32)) == count_macs(eager, (3, 32, 32))


@pytest.fixture
def fake_hub(monkeypatch):
    """Record create_repo / upload_folder calls, with a snapshot of the uploaded folder at call time."""
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        calls["upload_folder"].append({**kwargs, "files": files})
        return "https://huggingface.co/commit/fake"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_transformers_student_alone_with_its_card(tmp_path, fake_hub):
    data = random_image_dataset(16)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    trainer = DistillationTrainer(
        tiny_vit(), tiny_timm_vit(), make_args(tmp_path, push_to_hub=True, hub_model_id="someone/tiny-srd"),
        train_dataset=data, eval_dataset=data, processing_class=processor,
    )
    assert fake_hub["create_repo"] == ["someone/tiny-srd"]
    trainer.train()
    metrics = trainer.evaluate()
    trainer.model_card_context = {"dataset": "synthetic", "dataset_split": "train",
                                  "baseline_result": MeasuredResult("from-scratch baseline", 12.5, 50.0, "test")}
    trainer.push_to_hub(commit_message="final", tags=["my-tag"])

    (call,) = fake_hub["upload_folder"]
    assert call["repo_id"] == "someone/tiny-srd" and call["commit_message"] == "final"
    assert Path(call["folder_path"]).name == HUB_UPLOAD_DIRNAME and "path_in_repo" not in call
    assert set(call["files"]) == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    weights = load_file(Path(call["folder_path"]) / "model.safetensors")
    assert not any(key.startswith(("projector", "student_norm", "teacher")) for key in weights)
    assert sum(v.numel() for v in weights.values()) == sum(p.numel() for p in trainer.student.parameters())
    reloaded = type(trainer.student).from_pretrained(call["folder_path"]).state_dict()
    for name, value in trainer.student.state_dict().items():  # the uploaded weights are the trained student's
        torch.testing.assert_close(reloaded[name], value)
    card = call["files"]["README.md"].decode()
    metadata = _front_matter(card)
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == round(metrics["eval_top1"], 2)
    assert "| from-scratch baseline | 12.50 | 50.00 | test |" in card
    assert f"| student (this model) | {metrics['eval_top1']:.2f} |" in card and "after step 2 of 2" in card
    # the teacher and the agreement come from the same evaluation entry as the student's numbers (issue 14)
    assert f"| teacher (VisionTransformer) | {metrics['eval_teacher_top1']:.2f} |" in card
    assert f"teacher's class for\n{metrics['eval_teacher_agreement']:.2f} % of them" in card
    assert f"T = 1 is {metrics['eval_teacher_kl']:.4f}" in card
    assert {"knowledge-distillation", "my-tag"} <= set(metadata["tags"])
    assert "| `feature_loss_weight` | `2.0` |" in card and "| `temperature` | `1.0` |" in card


def test_checkpoint_pushes_upload_a_timm_student_and_never_the_checkpoint(tmp_path, fake_hub):
    data = random_image_dataset(16)
    args = make_args(tmp_path, push_to_hub=True, hub_model_id="someone/tiny-timm", hub_strategy="checkpoint",
                     save_strategy="steps", save_steps=1, max_steps=2)
    trainer = DistillationTrainer(tiny_timm_resnet(), tiny_timm_vit(), args, input_size=(3, 32, 32), train_dataset=data)
    trainer.train()
    local = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert any(key.startswith("projector.") for key in local)  # the checkpoint keeps the projector, locally only
    assert len(fake_hub["upload_folder"]) == 2
    for call in fake_hub["upload_folder"]:
        assert "path_in_repo" not in call and set(call["files"]) == {"config.json", "model.safetensors"}
        assert b'"architecture": "resnet10t"' in call["files"]["config.json"]


def test_card_states_the_schedule_that_ran_and_loads_from_the_local_folder_before_a_push(tmp_path):
    """Issue 12.14: the card said ``lr_scheduler_type: linear`` when the step schedule ran, and used the output folder's
    name as a Hub id in its usage snippet."""
    data = random_image_dataset(16)
    args = make_args(tmp_path / "run-name", lr_decay_at="0.5", lr_decay_rate=0.2, optim="sgd")
    trainer = DistillationTrainer(tiny_timm_resnet(), tiny_timm_vit(), args, input_size=(3, 32, 32),
                                  train_dataset=data, eval_dataset=data)
    trainer.train()
    trainer.evaluate()
    trainer.create_model_card()
    card = (tmp_path / "run-name" / "README.md").read_text()
    assert "| `lr_schedule` | `step: x0.2 at 0.5 of the run` |" in card and "lr_scheduler_type" not in card
    assert f'timm.create_model("local-dir:{tmp_path / "run-name"}"' in card and "hf-hub:run-name" not in card
    assert "| `method` | `srd+kd` |" in card
