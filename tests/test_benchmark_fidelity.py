"""benchmarks/throughput.py's torchdistill variant computes what torchdistill's own pipeline computes (issue 11).

torchdistill is a peer, not a dependency: .ci/run installs it without its dependencies so that this runs in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
torchdistill = pytest.importorskip("torchdistill", reason="torchdistill is installed by .ci/run (pip --no-deps)")

import throughput  # noqa: E402


def test_the_torchdistill_variant_equals_a_real_distillation_box_and_the_eval_mode_teacher_did_not():
    pair = throughput.build_pair("resnet")
    settings = throughput.Settings("cpu", 16, bf16=False, channels_last=False, compile=False)
    parts = throughput.torchdistill_parts(pair, settings)
    batch = throughput.make_batch(pair, settings)
    reference = throughput.torchdistill_pipeline_loss(pair, parts, batch)
    assert float(parts.loss(batch).detach()) == pytest.approx(reference, rel=1e-6)
    parts.teacher.eval()  # what the benchmark did before: the teacher's normaliser on running statistics
    assert float(parts.loss(batch).detach()) != pytest.approx(reference, rel=1e-3)
