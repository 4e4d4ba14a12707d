"""Kill a training run with SIGKILL while it writes a checkpoint, resume it, and get the uninterrupted result.

The run (tests/scripts/kill_resume_train.py) is a tiny deterministic CPU distillation: 8 steps, a checkpoint
every 2 with save_total_limit=1. It is killed while checkpoint-6 is half written, after checkpoint-4 completed.
The resumed run must skip the half-written checkpoint, restart from checkpoint-4, and end with exactly the
student, projector and normaliser state and the per-step logged metrics of a run that was never interrupted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_projkd.checkpointing import CHECKPOINT_MANIFEST, IncompleteCheckpointError, resolve_resume_checkpoint

SCRIPT = Path(__file__).resolve().parent / "scripts" / "kill_resume_train.py"
SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def _script_module():
    spec = importlib.util.spec_from_file_location("kill_resume_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _per_step_logs(path: Path) -> list[dict]:
    """Logged metrics of each step; the end-of-run summary (runtime, mean loss of that session) is left out."""
    return [entry for entry in json.loads(path.read_text()) if not SUMMARY_KEYS & set(entry)]


def test_sigkill_during_a_checkpoint_write_then_resume_matches_an_uninterrupted_run(tmp_path):
    script = _script_module()
    run_dir, log = tmp_path / "run", tmp_path / "killed.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "--stall-saving-at", "6"],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        reference = script.build_trainer(tmp_path / "reference")  # meanwhile, the uninterrupted run, in-process
        reference.train()
        script.save_result(reference, tmp_path / "reference.safetensors")
        deadline = time.monotonic() + 240
        while not (run_dir / "stalled").exists():
            assert killed.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the checkpoint-6 write"
            time.sleep(0.2)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()

    # the kill left checkpoint-6 half written and checkpoint-4 intact (not rotated away by save_total_limit=1)
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert (run_dir / "checkpoint-4" / CHECKPOINT_MANIFEST).is_file()
    assert not (run_dir / "checkpoint-6" / CHECKPOINT_MANIFEST).exists()
    with pytest.raises(IncompleteCheckpointError, match=r"checkpoint-6 has no checkpoint_complete.json.*checkpoint-4"):
        resolve_resume_checkpoint(str(run_dir / "checkpoint-6"), run_dir)

    resumed = script.build_trainer(run_dir)
    resumed.train(resume_from_checkpoint=True)  # must pick checkpoint-4, the newest complete one
    script.save_result(resumed, tmp_path / "resumed.safetensors")

    expected, got = load_file(tmp_path / "reference.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert set(got) == set(expected)
    assert any(k.startswith("projector.") for k in got) and "student_norm.running_mean" in got
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)  # CPU, deterministic: exact
    assert got["student_norm.num_batches_tracked"].item() == 8
    logs = _per_step_logs(tmp_path / "resumed.json")
    assert [entry["step"] for entry in logs] == list(range(1, 9))
    assert logs == _per_step_logs(tmp_path / "reference.json")
    assert all({"loss_ce", "loss_logit", "loss_feature"} <= set(entry) for entry in logs)
