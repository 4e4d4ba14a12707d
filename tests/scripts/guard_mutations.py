"""Guard check for issue 6: remove each reliability guard in a scratch copy of the package and confirm that its
test in tests/test_reliability.py then fails (so every test asserts the guard, not just the happy path).

    python tests/scripts/guard_mutations.py > benchmarks/results/6-reliability-guard-mutations.txt

Prints one line per guard: CAUGHT (its test fails without it) or MISSED. Exit status 1 if any is missed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (guard, file, code that implements it, code without it, pytest -k expression of its test)
MUTATIONS = [
    ("label names", "hf_projkd/validation.py",
     "    student_names, teacher_names = label_names(student), label_names(teacher)\n", "    return\n",
     "label_names_that_differ"),
    ("teacher renormalisation", "hf_projkd/validation.py",
     "    student_norm, teacher_norm = input_normalization(student, processor), input_normalization(teacher)\n",
     "    return None\n", "renormalised"),
    ("teacher input size", "hf_projkd/trainer.py",
     "        if self.teacher_input_size != self._student_input_size:\n", "        if False:\n", "own_input_size"),
    ("label range", "hf_projkd/data/loading.py",
     "    column = dataset.data.column(label_column)\n",
     "    return\n", "labels_outside or label_column_fast"),
    ("empty dataset", "hf_projkd/validation.py", "    if size == 0:\n", "    if False:\n", "empty_datasets"),
    ("empty split", "hf_projkd/data/loading.py",
     "    empty = [split for split, data in dataset.items() if len(data) == 0]\n", "    empty = []\n",
     "empty_datasets"),
    ("batch keys", "hf_projkd/validation.py", '    if "pixel_values" not in inputs:\n', "    if False:\n",
     "missing_image"),
    ("mode conversion", "hf_projkd/data/loading.py", "        if image.mode != self.mode:\n", "        if False:\n",
     "grayscale"),
    ("undecodable skip", "hf_projkd/data/loading.py", "            image.load()  # decode fully",
     "            pass  # decode fully", "undecodable"),
    ("bn batch of 1", "hf_projkd/validation.py", "    batch = args.per_device_train_batch_size\n", "    return\n",
     "batch_of_one"),
    ("non-finite guard", "hf_projkd/validation.py",
     "        names = sorted(self._bad)\n", "        names = []\n", "non_finite"),
    ("manifest check on resume", "hf_projkd/checkpointing.py",
     "    return str(verify_checkpoint(resume_from_checkpoint))\n", "    return str(resume_from_checkpoint)\n",
     "truncated_checkpoint"),
    ("rotate after manifest", "hf_projkd/trainer.py",
     "        limit, self.args.save_total_limit = self.args.save_total_limit, None\n",
     "        limit = self.args.save_total_limit\n", "crash_before"),
    ("local path check", "hf_projkd/loading.py", '    if name_or_path.startswith((".", "/", "~")) and',
     "    if False and", "cannot_be_loaded"),
]

def main() -> int:
    missed = 0
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copytree(ROOT / "hf_projkd", work / "hf_projkd", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        for name, file, old, new, expr in MUTATIONS:
            path = work / file
            original = path.read_text()
            if original.count(old) != 1:
                raise SystemExit(f"{name}: the guarded code changed in {file}; update this script.")
            path.write_text(original.replace(old, new))
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "pytest", "tests/test_reliability.py", "-q", "-x", "-p", "no:cacheprovider",
                     "-k", expr],
                    cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(work)},
                )
            finally:
                path.write_text(original)
            summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-200:]
            caught = result.returncode == 1 and "failed" in summary
            missed += not caught
            print(f"{'CAUGHT' if caught else 'MISSED'}  {name:26s} -k '{expr}': {summary}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
