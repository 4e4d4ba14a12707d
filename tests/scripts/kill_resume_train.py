"""A tiny, deterministic distillation run for tests/test_kill_resume.py, meant to be killed and resumed.

    python kill_resume_train.py OUTPUT_DIR [--resume] [--stall-saving-at STEP] [--result FILE.safetensors]

The test runs only the killed run as a subprocess; it builds the reference and the resumed run in-process with
``build_trainer`` (the same code, so the comparison is exact), which saves two interpreter start-ups.

``--stall-saving-at STEP`` writes most of checkpoint-STEP, creates ``OUTPUT_DIR/stalled`` and then waits, so the
test can SIGKILL the run while that checkpoint is being written. ``--result`` saves the final trainable state
(student + projector + normalisers) and the log history (``FILE.json``) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the tiny model factories

from conftest import make_args, random_image_dataset, tiny_timm_vit, tiny_vit  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import hf_projkd.trainer as trainer_module  # noqa: E402
from hf_projkd import DistillationTrainer  # noqa: E402

MAX_STEPS, SAVE_STEPS = 8, 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stall-saving-at", type=int, default=None)
    parser.add_argument("--result", default=None)
    options = parser.parse_args()
    trainer = build_trainer(options.output_dir)
    if options.stall_saving_at is not None:
        _stall_while_saving(trainer, options.stall_saving_at, Path(options.output_dir))
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    if options.result:
        save_result(trainer, options.result)


def build_trainer(output_dir: str | Path) -> DistillationTrainer:
    """The same tiny run every time (the test also builds it in-process for the reference and the resume)."""
    args = make_args(
        output_dir, max_steps=MAX_STEPS, save_strategy="steps", save_steps=SAVE_STEPS, save_total_limit=1,
        lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.05, max_grad_norm=1.0,
    )
    # 40 examples in batches of 8: 5 steps per epoch, so the resumed run crosses an epoch boundary
    return DistillationTrainer(tiny_vit(), tiny_timm_vit(), args, train_dataset=random_image_dataset(40))


def save_result(trainer: DistillationTrainer, path: str | Path) -> None:
    """Final trainable state (student + projector + normalisers) to ``path``, log history beside it (.json)."""
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(path))
    Path(path).with_suffix(".json").write_text(json.dumps(trainer.state.log_history))


def _stall_while_saving(trainer: DistillationTrainer, step: int, output_dir: Path) -> None:
    """At checkpoint-``step``: write the model, optimizer and RNG files, then hang before the run fingerprint and
    the manifest (the test kills us)."""
    real_write = trainer_module.write_fingerprint

    def stalling_write(folder: str, fingerprint: dict) -> None:
        if trainer.state.global_step == step:
            (output_dir / "stalled").touch()
            time.sleep(600)
        real_write(folder, fingerprint)

    trainer_module.write_fingerprint = stalling_write


if __name__ == "__main__":
    main()
