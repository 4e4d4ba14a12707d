"""Multi-process behaviour: a real 2-process DDP run (gloo, CPU), global-batch feature-norm statistics, and how the
teacher is prepared for each accelerate setup (DDP / FSDP / DeepSpeed ZeRO-2 / ZeRO-3)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType
from conftest import tiny_timm_resnet, tiny_vit

from hf_projkd import BatchFeatureNorm, DistillationModel, LossSettings, logsum_feature_loss
from hf_projkd.distributed import (
    deepspeed_teacher_config,
    global_batch_moments,
    prepare_teacher,
    teacher_strategy,
)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCRIPT = TESTS / "scripts" / "ddp_distill.py"
LAUNCH_TIMEOUT_S = 420  # two processes on a shared 2-core machine; it takes ~35 s when the machine is quiet
STATE_TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # DDP all-reduce vs local accumulation: float summation order only


def _load_script():
    spec = importlib.util.spec_from_file_location("ddp_distill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    """Launches the 2-process run once; returns {rank: results} (see tests/scripts/ddp_distill.py)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "CUDA_VISIBLE_DEVICES": ""}
    # --multi_gpu on a CPU-only machine starts 2 gloo processes through torchrun; --cpu would silently start 1
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", str(SCRIPT), str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    files = sorted(out.glob("rank*.pt"))
    assert [f.name for f in files] == ["rank0.pt", "rank1.pt"], f"expected one result per rank, got {files}"
    return {int(f.stem[4:]): torch.load(f, weights_only=False) for f in files}


def test_launch_really_starts_two_ddp_processes(ddp_run):
    assert [ddp_run[rank]["world_size"] for rank in (0, 1)] == [2, 2]
    assert ddp_run[0]["default"]["wrapped"] == "DistributedDataParallel"


@pytest.mark.parametrize("run", ["default", "sync"])
def test_student_and_projector_stay_identical_on_both_ranks(ddp_run, run):
    state0, state1 = ddp_run[0][run]["state"], ddp_run[1][run]["state"]
    assert set(state0) == set(state1)
    assert any(name.startswith("projector.") for name in state0)
    assert any(name.startswith("student.") for name in state0)
    for name, value in state0.items():
        if run == "default" and name.startswith("student_norm."):
            continue  # per-device running statistics (diagnostics only, never used to normalise) may differ
        torch.testing.assert_close(state1[name], value, atol=0, rtol=0, msg=f"{name} differs between ranks")


def test_two_processes_match_one_process_on_the_same_global_batch(ddp_run, tmp_path):
    """2 ranks x 8 samples (per-device statistics, the default) == 1 process, 2 accumulated micro-batches of 8.

    accelerate gives rank r the batches r, r + 2, ... of the sequential sampler, so each global step sees the
    same 16 samples, split the same way, in both runs.
    """
    reference = _load_script().build_trainer(tmp_path, gradient_accumulation_steps=2)
    start = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    reference.train()
    expected = reference.model.state_dict()
    ddp = ddp_run[0]["default"]
    moved = 0.0
    for name, value in ddp["state"].items():
        if name.startswith("student_norm."):
            continue  # running statistics: updated once per micro-batch here, once per rank-step there
        torch.testing.assert_close(value, expected[name], **STATE_TOLERANCE, msg=f"{name}: DDP != single process")
        if value.is_floating_point():
            moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-3  # the three steps really trained
    single_logs = [entry for entry in reference.state.log_history if "loss" in entry]
    assert len(ddp["logs"]) == len(single_logs) == 3
    for got, want in zip(ddp["logs"], single_logs, strict=True):
        for key in ("loss", "loss_ce", "loss_logit", "loss_feature"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=2e-4), key


def test_a_dataset_with_set_epoch_is_told_every_epoch_on_every_rank(ddp_run):
    assert ddp_run[0]["epochs"] == ddp_run[1]["epochs"] == [0, 1, 2]


def test_every_rank_evaluates_and_saves_the_same_batch_norm_statistics(ddp_run):
    from safetensors.torch import load_file

    first, second = ddp_run[0]["batchnorm"], ddp_run[1]["batchnorm"]
    assert first["buffers"] and set(first["buffers"]) == set(second["buffers"])
    for name, value in first["buffers"].items():
        torch.testing.assert_close(second["buffers"][name], value, atol=0, rtol=0, msg=name)
    assert first["metrics"]["eval_top1"] == second["metrics"]["eval_top1"]
    saved = load_file(Path(first["saved"]) / "model.safetensors")
    for name, value in first["buffers"].items():  # the saved student is the evaluated one
        torch.testing.assert_close(saved[name], value, atol=0, rtol=0, msg=name)


def test_sync_feature_norm_changes_the_feature_term(ddp_run):
    default_logs, sync_logs = ddp_run[0]["default"]["logs"], ddp_run[0]["sync"]["logs"]
    assert default_logs[0]["loss_ce"] == pytest.approx(sync_logs[0]["loss_ce"], abs=1e-4)  # same first batch
    assert abs(default_logs[0]["loss_feature"] - sync_logs[0]["loss_feature"]) > 1e-3


def test_sync_feature_norm_gives_global_batch_statistics_and_their_gradients(ddp_run):
    """Each rank's loss uses the 16-sample statistics; the DDP-averaged gradient equals the single-process one."""
    settings = LossSettings("logsum", 2.0, 4.0, "kl", 1.0, 1.0, 1.0, 8.0, 1.0, 0.0)
    torch.manual_seed(0)
    model = DistillationModel(tiny_vit(), 32, 48, settings)
    g = torch.Generator().manual_seed(1)
    student_features = torch.randn(16, 32, generator=g) * 3 + 1
    teacher_features = torch.randn(16, 48, generator=g) * 2 - 1
    projected = model.projector(student_features)
    running_mean, running_var = torch.zeros(48), torch.ones(48)
    student_side = F.batch_norm(projected, running_mean, running_var, training=True, momentum=0.1, eps=1e-4)
    teacher_side = F.batch_norm(teacher_features, None, None, training=True, eps=1e-4)
    losses = [logsum_feature_loss(student_side[half], teacher_side[half]) for half in (slice(0, 8), slice(8, 16))]
    torch.stack(losses).mean().backward()

    for rank in (0, 1):
        got = ddp_run[rank]["module"]
        assert got["loss"].item() == pytest.approx(losses[rank].item(), rel=1e-5)
        torch.testing.assert_close(got["grad"], model.projector.weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got["running_mean"], running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got["running_var"], running_var, atol=1e-6, rtol=1e-5)


# -- single process ------------------------------------------------------------------------------------------
def test_global_batch_moments_without_a_process_group_are_the_local_ones():
    x = torch.randn(6, 4, dtype=torch.float64) * 5 + 3
    mean, var, n = global_batch_moments(x)
    assert n == 6
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(var, x.var(0, unbiased=False))


def test_sync_batch_norm_in_one_process_equals_the_per_device_one():
    x = torch.randn(8, 5)
    synced, local = BatchFeatureNorm(5), BatchFeatureNorm(5)
    synced.sync = True
    torch.testing.assert_close(synced(x), local(x))
    torch.testing.assert_close(synced.running_var, local.running_var)
    assert "global batch" in repr(BatchFeatureNorm(5, sync=True))


def _accelerator(kind: DistributedType, plugin=None, mixed_precision: str = "no"):
    """The few attributes of an Accelerator that the teacher preparation reads."""
    prepared = []

    def prepare_model(model, evaluation_mode=False):
        prepared.append(evaluation_mode)
        return model

    return SimpleNamespace(
        distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin), device=torch.device("cpu"),
        mixed_precision=mixed_precision, prepare_model=prepare_model, prepared=prepared,
    )


def _config(name: str):
    return load_config_from_file(str(REPO / "recipes" / "configs" / f"accelerate_{name}.yaml"))


def _deepspeed_plugin(config) -> DeepSpeedPlugin:
    ds = config.deepspeed_config
    return DeepSpeedPlugin(
        zero_stage=ds["zero_stage"], gradient_accumulation_steps=ds["gradient_accumulation_steps"],
        gradient_clipping=ds["gradient_clipping"], offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"], zero3_init_flag=ds["zero3_init_flag"],
    )


@pytest.mark.parametrize(
    ("name", "strategy"),
    [("ddp", "ddp"), ("fsdp", "fsdp"), ("deepspeed_zero2", "deepspeed"), ("deepspeed_zero3", "deepspeed_zero3")],
)
def test_example_accelerate_configs_parse_and_pick_the_teacher_path(name, strategy):
    config = _config(name)
    assert config.mixed_precision == "bf16"
    assert config.num_processes > 1
    plugin = _deepspeed_plugin(config) if config.distributed_type == DistributedType.DEEPSPEED else None
    assert teacher_strategy(_accelerator(config.distributed_type, plugin)) == strategy
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2


def test_teacher_is_prepared_in_evaluation_mode_without_ddp_for_single_ddp_and_fsdp():
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP):
        accelerator = _accelerator(kind)
        teacher = prepare_teacher(accelerator, tiny_timm_resnet().train())
        assert accelerator.prepared == [True], kind  # evaluation_mode=True: no DDP/FSDP wrapper, no sharding
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_deepspeed_zero2_teacher_is_cast_to_the_training_dtype():
    plugin = _deepspeed_plugin(_config("deepspeed_zero2"))
    teacher = prepare_teacher(_accelerator(DistributedType.DEEPSPEED, plugin, "bf16"), tiny_timm_resnet())
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_deepspeed_zero3_teacher_config_keeps_sharding_and_drops_the_optimizer():
    train_config = {
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}, "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"}, "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    }
    config = deepspeed_teacher_config(train_config)
    assert config["zero_optimization"] == {"stage": 3}
    assert "optimizer" not in config and "scheduler" not in config and "train_batch_size" not in config
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_accumulation_steps"] == 1
    assert config["bf16"] == {"enabled": True} and "gradient_clipping" not in config
    assert "optimizer" in train_config  # the trainer's own config is left alone


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_zero3_without_deepspeed_says_how_to_fix_it():
    plugin = _deepspeed_plugin(_config("deepspeed_zero3"))
    with pytest.raises(ImportError, match="pip install deepspeed"):
        prepare_teacher(_accelerator(DistributedType.DEEPSPEED, plugin, "bf16"), tiny_timm_resnet())
