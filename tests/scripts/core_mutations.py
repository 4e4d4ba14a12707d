"""Standing mutation check of the method's core (issue 13): break the losses, projector, model, trainer and family
adapters one realistic bug at a time, in a scratch copy of the package, and confirm that a single-process test fails.

    python tests/scripts/core_mutations.py            # writes benchmarks/results/core_mutations.md
    python tests/scripts/core_mutations.py --only kd  # the mutations whose name contains "kd", nothing written

A mutation that survives means a bug of that kind could ship with a green suite. The script first checks that the
scratch copy is what the tests import (an import-time error planted there must reach pytest), then that the chosen
tests pass on the unmutated copy, then runs each mutation with a focused test selection (the whole run is meant to
stay under 15 minutes on 2 CPU cores). The distributed tests (which launch processes) are never run here.
Exit status 1 if a mutation survives or a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "benchmarks" / "results" / "core_mutations.md"
SANITY_MESSAGE = "core_mutations: the mutated scratch copy was imported"

Edit = tuple[str, str, str]  # (file, code as it is, code with the bug)


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


GF = "tests/test_gradient_flow.py::test_"
REFERENCE = GF + "feature_loss_and_its_gradients_match_the_reference"
SEPARATES = GF + "the_reference_separates_the_plausible_bugs"
PARAMETERS = GF + "trained_parameters_are_the_student_and_the_projector_only"
ALONE = GF + "feature_term_alone_trains_the_student_not_only_the_projector"
TRAINER_REFERENCE = GF + "trainer_feature_loss_and_gradients_match_the_reference"
WEIGHTED_SUM = GF + "total_loss_is_the_weighted_sum_of_the_reference_terms"
DKD_SOFT = GF + "dkd_takes_the_target_class_of_soft_labels"
LOGGED = GF + "logged_components_are_means_over_the_logging_window_and_accumulation"
DEIT = GF + "deit_ce_reaches_the_class_head_and_distillation_the_distillation_head"
TEACHER = GF + "teacher_gets_no_gradient_and_its_outputs_do_not_depend_on_the_student"
INPLACE_DROPOUT = GF + "transformers_features_are_read_before_an_inplace_head_dropout"
MIXED_TEACHER = GF + "under_mixup_the_teacher_sees_the_mixed_teacher_pixel_values"
LOSSES = "tests/test_losses.py"
PROJECTOR = "tests/test_projector.py"
TR = "tests/test_trainer.py::test_"
FAMILIES = "tests/test_families.py::test_"

L, P, M, T, F, D = ("hf_projkd/losses.py", "hf_projkd/projector.py", "hf_projkd/modeling.py", "hf_projkd/trainer.py",
                    "hf_projkd/families.py", "hf_projkd/distributed.py")
LOGSUM = "    return torch.log(diff.pow(exponent).sum() + LOGSUM_EPS)\n"
KD = '    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2\n'
DKD = "    return (alpha * tckd + beta * nckd) * temperature**2\n"
BN_CALL = ("            self.running_mean if self.training else None,\n"
           "            self.running_var if self.training else None,\n"
           "            training=True,\n")

MUTATIONS = [
    # -- losses.py ---------------------------------------------------------------------------------------------
    Mutation("logsum: exponent ignored (squares)", "the LogSum exponent alpha: a soft maximum of 2nd, not 4th powers",
             ((L, LOGSUM, LOGSUM.replace("pow(exponent)", "pow(2)")),), (LOSSES, REFERENCE)),
    Mutation("logsum: log dropped", "the log: gradients scale with the distance instead of being normalised",
             ((L, LOGSUM, "    return diff.pow(exponent).sum() + LOGSUM_EPS\n"),), (LOSSES, REFERENCE)),
    Mutation("logsum: mean instead of sum", "the logged value only (log(mean) = log(sum) - log N: same gradients)",
             ((L, LOGSUM, LOGSUM.replace(".sum()", ".mean()")),), (LOSSES, REFERENCE)),
    Mutation("logsum: eps outside the log", "identical features give -inf and NaN gradients",
             ((L, LOGSUM, "    return torch.log(diff.pow(exponent).sum()) + LOGSUM_EPS\n"),), (LOSSES,)),
    Mutation("logsum: eps 1e-12 -> 1", "the loss value and its gradient (log(S + 1))",
             ((L, "LOGSUM_EPS = 1e-12\n", "LOGSUM_EPS = 1.0\n"),), (LOSSES, REFERENCE)),
    Mutation("logsum: abs dropped", "odd / non-integer exponents (negative or NaN terms); alpha = 4 unchanged",
             ((L, "    diff = (student.float() - teacher.float()).abs()\n",
               "    diff = student.float() - teacher.float()\n"),), (LOSSES, REFERENCE)),
    Mutation("kd: no T^2", "the KD gradient scale at T != 1 (Hinton's T^2 compensation)",
             ((L, KD, KD.replace("temperature**2", "temperature")),), (LOSSES, WEIGHTED_SUM)),
    Mutation("kd: reversed KL", "KL(p_s || p_t) instead of KL(p_t || p_s): mode-seeking instead of covering",
             ((L, KD, KD.replace("(log_p_s, log_p_t,", "(log_p_t, log_p_s,")),), (LOSSES, WEIGHTED_SUM)),
    Mutation("kd: teacher not softened", "the temperature applies to the student only",
             ((L, "    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)\n",
               "    log_p_t = F.log_softmax(teacher_logits.float(), dim=-1)\n"),), (LOSSES, WEIGHTED_SUM)),
    Mutation("kd: mean over classes", "KD divided by the number of classes (reduction='mean')",
             ((L, KD, KD.replace('"batchmean"', '"mean"')),), (LOSSES, WEIGHTED_SUM)),
    Mutation("dkd: alpha and beta swapped", "the TCKD / NCKD balance of DKD",
             ((L, DKD, "    return (beta * tckd + alpha * nckd) * temperature**2\n"),), (LOSSES, WEIGHTED_SUM)),
    Mutation("dkd: no T^2", "the DKD gradient scale", ((L, DKD, "    return alpha * tckd + beta * nckd\n"),),
             (LOSSES, WEIGHTED_SUM)),
    Mutation("dkd: teacher target not masked", "NCKD's teacher distribution includes the target class",
             ((L, "    log_q_t = F.log_softmax(t + masked, dim=-1)\n", "    log_q_t = F.log_softmax(t, dim=-1)\n"),),
             (LOSSES, WEIGHTED_SUM)),
    Mutation("ce: soft targets summed over the batch", "the mixup / CutMix CE scales with the batch size",
             ((L, "F.log_softmax(logits, dim=-1), dim=-1).mean()", "F.log_softmax(logits, dim=-1), dim=-1).sum()"),),
             (LOSSES, "tests/test_mixup.py::test_soft_target_cross_entropy_matches_label_smoothing_and_is_linear_in_"
              "the_mix")),
    Mutation("ce: label smoothing dropped", "label smoothing of the hard-label CE",
             ((L, "F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)",
               "F.cross_entropy(logits, labels.long())"),), (LOSSES, WEIGHTED_SUM)),
    Mutation("hard labels: argmax over the batch", "DKD's target class under mixup (soft labels)",
             ((L, "labels.argmax(dim=-1)", "labels.argmax(dim=0)"),), (DKD_SOFT,)),
    # -- projector.py ------------------------------------------------------------------------------------------
    Mutation("projector: no bias", "checkpoints and the layernorm/none variants (batch norm removes a bias)",
             ((P, "return nn.Linear(in_dim, out_dim)\n", "return nn.Linear(in_dim, out_dim, bias=False)\n"),),
             (PROJECTOR, REFERENCE)),
    Mutation("bn: running statistics in eval mode", "a feature loss computed in eval mode (SRD: batch statistics)",
             ((P, BN_CALL, "            self.running_mean,\n            self.running_var,\n"
                           "            training=self.training,\n"),), (PROJECTOR, REFERENCE)),
    Mutation("bn: eps 1e-4 -> 1e-5", "the normalisation of low-variance feature dims",
             ((P, "eps: float = 1e-4, momentum", "eps: float = 1e-5, momentum"),), (PROJECTOR, REFERENCE)),
    Mutation("bn: affine parameters", "extra trained scale/shift on each side (not SRD)",
             ((P, '        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))\n',
               '        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))\n'
               "        self.weight = nn.Parameter(torch.ones(num_features))\n"
               "        self.bias = nn.Parameter(torch.zeros(num_features))\n"),
              (P, BN_CALL, BN_CALL.replace("training=True,", "self.weight, self.bias, training=True,"))),
             (PROJECTOR, PARAMETERS)),
    Mutation("bn: hand-written with unbiased variance", "the normalisation (and no running statistics)",
             ((P, "        return F.batch_norm(\n            x,\n",
               "        return (x - x.mean(0)) / torch.sqrt(x.var(0) + self.eps)\n"
               "        return F.batch_norm(\n            x,\n"),), (PROJECTOR, REFERENCE)),
    # -- modeling.py -------------------------------------------------------------------------------------------
    Mutation("student features detached", "the student gets no gradient from the feature term (projector trains)",
             ((M, "        projected = self.projector(student_features)\n",
               "        projected = self.projector(student_features.detach())\n"),), (ALONE, TRAINER_REFERENCE)),
    Mutation("teacher features un-normalised", "the teacher side of the feature loss (raw scale)",
             ((M, "self.teacher_norm(teacher_features.float())", "teacher_features.float()"),),
             (REFERENCE, TRAINER_REFERENCE)),
    Mutation("student side un-normalised", "the student side of the feature loss (raw projector output)",
             ((M, "self.student_norm(projected.float())", "projected.float()"),), (REFERENCE, TRAINER_REFERENCE)),
    Mutation("kd on the class head", "DeiT: KD trains the class-token head, nothing the distillation head",
             ((M, "self._logit_loss(distillation_logits,", "self._logit_loss(class_logits,"),), (DEIT,)),
    Mutation("ce on the distillation head", "DeiT: CE trains the distillation-token head",
             ((M, "classification_loss(class_logits, labels,", "classification_loss(distillation_logits, labels,"),),
             (DEIT,)),
    Mutation("ce and kd weights swapped", "the CE / KD balance (equal in the default preset, so only visible "
             "with other weights)",
             ((M, 'weights["loss_ce"] = s.ce_weight\n', 'weights["loss_ce"] = s.logit_loss_weight\n'),
              (M, 'weights["loss_logit"] = s.logit_loss_weight\n', 'weights["loss_logit"] = s.ce_weight\n')),
             (WEIGHTED_SUM, TR + "each_loss_component_is_logged_and_sums_to_the_total")),
    Mutation("kd term dropped from the total", "KD is computed and logged but never trained",
             ((M, "for name, value in parts.items())", "for name, value in parts.items() if name != \"loss_logit\")"),),
             (WEIGHTED_SUM, TR + "each_loss_component_is_logged_and_sums_to_the_total")),
    Mutation("label smoothing not read from the arguments", "label_smoothing_factor is silently ignored",
             ((M, 'getattr(args, "label_smoothing_factor", 0.0)', 'getattr(args, "label_smoothing", 0.0)'),),
             (WEIGHTED_SUM,)),
    Mutation("dkd arguments out of order", "DKD gets beta as alpha and alpha as beta",
             ((M, "s.dkd_alpha, s.dkd_beta, s.temperature", "s.dkd_beta, s.dkd_alpha, s.temperature"),),
             (WEIGHTED_SUM,)),
    # -- trainer.py (and the teacher preparation) --------------------------------------------------------------
    Mutation("teacher not frozen", "the teacher gets gradients (memory, time; one step from training it)",
             ((T, "            teacher.eval().requires_grad_(False)\n", "            teacher.eval()\n"),
              (D, "    teacher = teacher.eval().requires_grad_(False)\n", "    teacher = teacher.eval()\n"),
              (T, "    @torch.no_grad()\n    def teacher_forward(", "    def teacher_forward(")),
             (TEACHER, TR + "projector_is_trained_and_teacher_stays_frozen_in_eval_mode")),
    Mutation("teacher left in train mode", "a teacher put in train mode runs (and updates) its batch norm",
             ((T, "        if self.teacher.training:  # someone called .train() on it: BN running statistics must stay "
               "frozen\n            self.teacher.eval()\n", ""),),
             (TEACHER, TR + "projector_is_trained_and_teacher_stays_frozen_in_eval_mode")),
    Mutation("teacher outside the autocast", "the teacher runs in fp32 under bf16/fp16 training",
             ((T, "            with self.accelerator.autocast():\n"
                  "                return self._teacher_call(pixel_values)\n",
               "            return self._teacher_call(pixel_values)\n"),),
             ("tests/test_precision_compile.py::test_bf16_runs_student_and_teacher_in_bf16_and_the_losses_in_"
              "fp32",)),
    Mutation("teacher sees unmixed images", "under mixup/CutMix the teacher's targets are for other images",
             ((T, 'batch = {**inputs, "pixel_values": pixel_values, "teacher_pixel_values": teacher_pixels}\n',
               "batch = dict(inputs)\n"),),
             ("tests/test_mixup.py::test_mixup_acts_on_training_batches_only_and_needs_an_even_batch", MIXED_TEACHER)),
    Mutation("loss_is_scaled_for_ga = True", "gradient accumulation: the gradient is GA times too large",
             ((T, "    loss_is_scaled_for_ga = False\n", "    loss_is_scaled_for_ga = True\n"),),
             (TR + "gradient_accumulation_gives_the_full_batch_ce_and_kd_gradients", LOGGED)),
    Mutation("components summed, not averaged", "the logged loss_ce / loss_logit / loss_feature with GA or "
             "logging_steps > 1", ((T, "reduce(total / self._component_steps,", "reduce(total,"),),
             (LOGGED, TR + "each_loss_component_is_logged_and_sums_to_the_total")),
    Mutation("save_model writes the whole model", "the saved 'student' is the DistillationModel (projector "
             "included), which no library loads",
             ((T, "        if _internal_call and output_dir is not None:\n", "        if output_dir is not None:\n"),),
             (TR + "save_model_writes_the_transformers_student_only",)),
    Mutation("weight decay on 1-d parameters", "no_1d: biases, norms and tokens decay",
             ((T, "if parameters[n].ndim > 1 and n not in student_no_decay]", "if n not in student_no_decay]"),),
             (TR + "weight_decay_filters",)),
    Mutation("weight decay on tokens", "no_1d: class token and position embeddings decay",
             ((T, "if parameters[n].ndim > 1 and n not in student_no_decay]", "if parameters[n].ndim > 1]"),),
             (TR + "weight_decay_filters",)),
    # -- families.py -------------------------------------------------------------------------------------------
    Mutation("timm: features after the head dropout", "timm features are dropped out (not the paper's features)",
             ((F, "        logits = model.get_classifier()(dropped)\n        return ModelFeatures(logits, features,",
               "        logits = model.get_classifier()(dropped)\n        return ModelFeatures(logits, dropped,"),),
             (FAMILIES + "features_are_read_before_the_head_dropout_and_the_logits_after_it",)),
    Mutation("transformers: features after the head dropout", "MobileNetV2's 0.8 dropout zeroes most features",
             ((F, "if dropped is not None and dropped[0] is self._captured:\n", "if False:\n"),),
             (FAMILIES + "features_are_read_before_the_head_dropout_and_the_logits_after_it", INPLACE_DROPOUT)),
    Mutation("deit: features from the class token", "the projector reads the class token, not the distillation "
             "token", ((F, "        self.head = model.distillation_classifier\n",
                        "        self.head = model.cls_classifier\n"),),
             (DEIT, FAMILIES + "deit_with_teacher_gives_both_heads_and_the_distillation_token")),
    Mutation("deit: heads swapped", "CE trains the distillation head and KD the class head",
             ((F, "ModelFeatures(output.logits, features, output.cls_logits, output.distillation_logits)",
               "ModelFeatures(output.logits, features, output.distillation_logits, output.cls_logits)"),),
             (DEIT,)),
    Mutation("timm distilled deit: heads swapped", "timm DeiT: KD trains head, CE head_dist",
             ((F, "dist_token, class_logits, dist_logits)", "dist_token, dist_logits, class_logits)"),),
             (FAMILIES + "timm_distilled_deit_gives_class_and_distillation_heads",)),
]


#: Third-party modules the package and the tests import: a worker imports them once and forks each pytest run.
PRELOAD = ("numpy", "torch", "torch.nn.functional", "safetensors.torch", "datasets", "accelerate", "accelerate.utils",
           "timm", "timm.data", "transformers", "transformers.trainer", "transformers.trainer_utils",
           "transformers.modeling_outputs", "transformers.models.vit.modeling_vit",
           "transformers.models.deit.modeling_deit", "transformers.models.timm_wrapper.modeling_timm_wrapper",
           "pytest")
RUN_LIMIT_S = 600  # one mutation's tests; a run that hangs is stopped and reported


def pytest_args(tests: tuple[str, ...] | list[str]) -> list[str]:
    # the worker has imported anyio (through transformers), whose pytest plugin then cannot be assert-rewritten
    return ["-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning", "-rfE", *tests]


def environment(work: Path, threads: int | None) -> dict[str, str]:
    """The scratch copy first on the path, offline, and no bytecode written (a mutation and its undo can share a
    size and an mtime second, and a stale .pyc would run the wrong code)."""
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class Runner:
    """Runs pytest in one scratch copy. By default through a worker process that has imported torch, transformers,
    timm, ... once and forks a child per run, which imports ``hf_projkd`` afresh from the copy as it is then: the
    imports cost ~15 s of CPU per interpreter, more than most mutations' tests. ``fresh=True``: a new interpreter
    per run (slower; the way to rule out the worker if a result looks odd)."""

    def __init__(self, work: Path, threads: int, fresh: bool = False) -> None:
        self.work, self.threads, self.worker = work, threads, None
        if not fresh:
            self.worker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=work,
                                           env=environment(work, threads), stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True)

    def pytest(self, tests: tuple[str, ...] | list[str]) -> tuple[int, str]:
        """(pytest's exit status, its output)."""
        if self.worker is None:
            result = subprocess.run([sys.executable, "-m", "pytest", *pytest_args(tests)], cwd=self.work,
                                    env=environment(self.work, self.threads), capture_output=True, text=True)
            return result.returncode, result.stdout + result.stderr
        self.worker.stdin.write(json.dumps({"cwd": str(self.work), "args": pytest_args(tests)}) + "\n")
        self.worker.stdin.flush()
        line = self.worker.stdout.readline()
        if not line:
            raise SystemExit(f"The pytest worker of {self.work} died (exit {self.worker.wait()}).")
        answer = json.loads(line)
        return answer["rc"], answer["output"]

    def python(self, code: str) -> str:
        """``python -c code`` in a fresh interpreter of this copy: what a plain import there gives."""
        result = subprocess.run([sys.executable, "-c", code], cwd=self.work, env=environment(self.work, self.threads),
                                capture_output=True, text=True)
        return result.stdout.strip() or result.stderr[-300:]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stdin.close()
            self.worker.wait()


def serve() -> int:
    """The worker: import the heavy third-party modules, then for each request line fork a child that runs pytest
    in the scratch copy (the worker itself never imports hf_projkd, never starts threads, never runs torch ops)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import pytest

    loaded = [name for name in sys.modules if name.split(".")[0] in ("hf_projkd", "conftest")]
    if loaded:
        raise SystemExit(f"The worker imported {loaded}: the children would not import the mutated copy.")
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryFile() as log:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: output to the log, the scratch copy first on the path
                code = 3
                try:
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
                    os.chdir(request["cwd"])
                    sys.path.insert(0, request["cwd"])
                    code = int(pytest.main(request["args"]))
                except BaseException:  # noqa: BLE001 - reported through the log and the exit status
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            deadline = time.monotonic() + RUN_LIMIT_S
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    code = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    code = -9
                    break
                time.sleep(0.1)
            log.seek(0)
            output = log.read().decode(errors="replace")
        if code == -9:
            output += f"\n(stopped after {RUN_LIMIT_S} s)"
        print(json.dumps({"rc": code, "output": output}), flush=True)
    return 0


def failing_tests(output: str) -> list[str]:
    """``file::test`` of every FAILED / ERROR line of pytest's short summary (parametrisations folded)."""
    names: list[str] = []
    for line in output.splitlines():
        match = re.match(r"(?:FAILED|ERROR) (tests/\S+)", line)
        if match:
            name = re.sub(r"\[.*$", "", match.group(1)).removeprefix("tests/")
            if name not in names:
                names.append(name)
    return names


def summary(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip() and not line.startswith("(stopped")]
    return lines[-1].strip("= ") if lines else ""


def apply(work: Path, edits: tuple[Edit, ...]) -> dict[Path, str]:
    """Write the mutated files; returns the originals to restore. Each old code must occur exactly once."""
    originals: dict[Path, str] = {}
    for file, old, new in edits:
        path = work / file
        originals.setdefault(path, path.read_text())
        text = path.read_text()
        if text.count(old) != 1:
            restore(originals)
            raise SystemExit(f"{file}: the code to mutate occurs {text.count(old)} times, not once: {old!r}. "
                             "The package changed; update this script.")
        path.write_text(text.replace(old, new))
    return originals


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} CPU cores, no GPU used; {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def check_scratch_is_imported(runner: Runner) -> str:
    """The scratch copy must be what the tests import (PYTHONPATH before the editable install, in a fresh
    interpreter and in the worker's children): an error planted in its ``__init__`` has to reach pytest."""
    work = runner.work
    where = runner.python("import hf_projkd; print(hf_projkd.__file__)")
    if not where.startswith(str(work)):
        raise SystemExit(f"hf_projkd is imported from {where}, not from the scratch copy {work}.")
    init = (work / "hf_projkd/__init__.py").read_text()
    originals = apply(work, (("hf_projkd/__init__.py", init, init + f'\nraise RuntimeError("{SANITY_MESSAGE}")\n'),))
    try:
        code, output = runner.pytest([LOSSES])
    finally:
        restore(originals)
    if code == 0 or SANITY_MESSAGE not in output:
        raise SystemExit("Sanity mutation not seen by pytest: the tests do not import the scratch copy.\n"
                         + output[-2000:])
    return f"an error planted in the scratch copy's hf_projkd/__init__.py made pytest fail ({summary(output)})"


def write_report(path: Path, rows: list[dict[str, str]], sanity: str, baseline: str, seconds: float,
                 parallel: str) -> None:
    caught = sum(row["result"] == "CAUGHT" for row in rows)
    lines = [
        "# Core mutation check (issue 13)",
        "",
        "Each row is one realistic bug planted in a scratch copy of `hf_projkd` (the tests import it through "
        "`PYTHONPATH`), followed by a focused run of single-process tests; CAUGHT means at least one of them failed "
        "(all the selected tests that failed are listed). Generated by `tests/scripts/core_mutations.py`.",
        "",
        f"- Command: `python tests/scripts/core_mutations.py` (from the repository root), "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- Machine: {machine()}; load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
        "(other work on the machine slows the run)",
        f"- Sanity: {sanity}; unmutated baseline of every selected test: {baseline}",
        f"- Result: **{caught} of {len(rows)} mutations caught, {len(rows) - caught} survived**; "
        f"whole run {seconds / 60:.1f} min ({parallel})",
        "",
        "| # | mutation | file | what it breaks | result | failing tests | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        cells = [str(i), *(row[key].replace("|", "\\|") for key in ("name", "file", "breaks", "result", "by")),
                 row["seconds"]]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def scratch_copy(folder: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hf_projkd", "tests", "recipes"):
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    return folder


def run_mutation(runner: Runner, mutation: Mutation) -> dict[str, str]:
    began = time.perf_counter()
    originals = apply(runner.work, mutation.edits)
    try:
        code, output = runner.pytest(mutation.tests)
    finally:
        restore(originals)
    failed = failing_tests(output)
    if code == 1 and failed:
        verdict = "CAUGHT"
    elif code == 0:
        verdict = "SURVIVED"
    else:
        verdict = f"ERROR (pytest exit {code})"
    files = ", ".join(dict.fromkeys(Path(file).name for file, _, _ in mutation.edits))
    by = "<br>".join(failed) if failed else f"none ({summary(output)})"
    return dict(name=mutation.name, file=files, breaks=mutation.breaks, result=verdict, by=by,
                seconds=f"{time.perf_counter() - began:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the mutations whose name contains this (no report written)")
    parser.add_argument("--jobs", type=int, default=2, help="mutations run at once, each in its own scratch copy "
                        "with cpu_count / jobs threads (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="a new interpreter per pytest run (no fork worker)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the markdown report (default: %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return serve()
    mutations = [m for m in MUTATIONS if options.only is None or options.only in m.name]
    stale = [f"{mutation.name} ({file}: {old.strip()!r})" for mutation in mutations for file, old, _ in mutation.edits
             if (ROOT / file).read_text().count(old) != 1]
    if stale:  # every code to mutate must be there, once, before anything runs
        raise SystemExit("The code to mutate is not found exactly once (the package changed; update this script):\n  "
                         + "\n  ".join(stale))
    jobs = max(1, min(options.jobs, len(mutations)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(jobs) as pool:
        runners = [Runner(scratch_copy(Path(scratch) / f"copy{i}"), threads, options.fresh) for i in range(jobs)]
        try:
            sanity = list(pool.map(check_scratch_is_imported, runners))[0]
            sanity += f" (checked in each of the {jobs} copies)"
            print(f"sanity: {sanity}", flush=True)
            selected = list(dict.fromkeys(test for m in mutations for test in m.tests))
            baseline_runs = list(pool.map(lambda i: runners[i].pytest(selected[i::jobs]), range(jobs)))
            baseline = " + ".join(summary(output) for _, output in baseline_runs)
            if any(code != 0 for code, _ in baseline_runs):
                print("\n".join(output[-3000:] for _, output in baseline_runs))
                raise SystemExit(f"The selected tests fail WITHOUT a mutation ({baseline}): fix them first.")
            print(f"baseline: {baseline}", flush=True)

            pending: queue.Queue[int] = queue.Queue()
            for index in range(len(mutations)):
                pending.put(index)
            rows: list[dict[str, str] | None] = [None] * len(mutations)
            printing = threading.Lock()

            def work_through(runner: Runner) -> None:
                while True:
                    try:
                        index = pending.get_nowait()
                    except queue.Empty:
                        return
                    row = rows[index] = run_mutation(runner, mutations[index])
                    with printing:
                        by = row["by"].replace("<br>", ", ")
                        print(f"{row['result']:8s} {row['name']:45s} {row['seconds']:>4s}s  {by}", flush=True)

            list(pool.map(work_through, runners))
        finally:
            for runner in runners:
                runner.close()
    seconds = time.perf_counter() - start
    done = [row for row in rows if row is not None]
    survived = [row for row in done if row["result"] != "CAUGHT"]
    print(f"{len(done) - len(survived)} of {len(done)} caught in {seconds / 60:.1f} min", flush=True)
    if options.only is None:
        how = (f"{jobs} mutations at once, each in its own scratch copy, {threads} thread(s) each, "
               + ("a new interpreter per run" if options.fresh else "pytest forked from a worker that pre-imports "
                  "torch/transformers/timm"))
        write_report(options.output, done, sanity, baseline, seconds, how)
        print(f"wrote {options.output}")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
