"""Guard check (issues 6 and 12): remove each reliability guard in a scratch copy of the package and the recipes, and
confirm that its test then fails, so that every test asserts its guard and not just the happy path.

    python tests/scripts/guard_mutations.py > benchmarks/results/6-reliability-guard-mutations.txt
    python tests/scripts/guard_mutations.py --only lock      # the guards whose name contains "lock"

First checks that the scratch copy is what the tests import (an import-time error planted there must reach pytest)
and that the selected tests pass on the unmutated copy; then prints one line per guard: CAUGHT (its test fails
without it) or MISSED. Exit status 1 if a guard is missed or a check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REL = "tests/test_reliability.py"
I12 = "tests/test_issue12_guards.py"


@dataclass(frozen=True)
class Guard:
    name: str
    file: str
    code: str  # the guard as it is in the file (must occur exactly once)
    without: str  # the same place with the guard removed
    test_file: str
    select: str  # pytest -k expression of the guard's test(s)


GUARDS = [
    # -- teacher vs student
    Guard("same module as student and teacher", "hf_projkd/trainer.py",
          "        if teacher is not None and teacher is student:\n", "        if False:\n", I12, "test_3_"),
    Guard("class names", "hf_projkd/validation.py",
          "    student_names, teacher_names = student.label_names(), teacher.label_names()\n", "    return\n", REL,
          "label_names_that_differ"),
    Guard("class names: case and separators", "hf_projkd/validation.py",
          '    return " ".join(name.replace("_", " ").split()).casefold()\n', "    return name\n", I12,
          "differ_only_in_case"),
    Guard("teacher renormalisation", "hf_projkd/trainer.py",
          "        return TeacherInputNormalizer(student, teacher.values)\n", "        return None\n", REL,
          "renormalised"),
    Guard("student normalisation unknown: WARNING", "hf_projkd/trainer.py",
          '            if getattr(collator, "teacher", None) is None:  # a collator that prepares teacher_pixel_values '
          "says so\n                logger.warning(",
          '            if getattr(collator, "teacher", None) is None:  # a collator that prepares teacher_pixel_values '
          "says so\n                logger.debug(", I12, "test_8_a_student_that_declares"),
    Guard("teacher input size", "hf_projkd/trainer.py",
          "        except Exception as error:\n            size = self.teacher_adapter.input_size()\n",
          "        except ZeroDivisionError as error:\n            size = self.teacher_adapter.input_size()\n", REL,
          "own_input_size"),
    Guard("half-precision teacher inputs", "hf_projkd/trainer.py",
          "            pixel_values = pixel_values.to(weight.dtype)\n", "            pass\n", I12, "half_precision"),
    Guard("teacher not loaded when unused", "hf_projkd/trainer.py",
          "            args.teacher_model_name_or_path if args.uses_teacher or args.eval_teacher_metrics else None)\n",
          "            args.teacher_model_name_or_path)\n", I12, "nothing_uses"),
    # -- the teacher check
    Guard("teacher check runs", "hf_projkd/trainer.py",
          "            self.teacher_check_result = self.check_teacher()\n",
          "            self.teacher_check_result = None\n", I12, "test_8_ or test_9_permuted"),
    Guard("teacher check: other normalisations", "hf_projkd/teacher_check.py",
          "        if _mcnemar_better(hit[name], hit[as_fed]):\n", "        if False:\n", I12, "random_init_timm"),
    Guard("teacher check: label order", "hf_projkd/teacher_check.py", "    if seen >= 5 * num_classes:\n",
          "    if False:\n", I12, "test_9_permuted"),
    Guard("teacher check: batches checked first", "hf_projkd/trainer.py",
          "        check_batch(batch, channels, needs_labels=False)\n", "        pass\n", I12,
          "bad_pixel_values and warn"),
    Guard("teacher check: no labels", "hf_projkd/teacher_check.py",
          "        if labels is None:\n            return None\n", "        if False:\n            return None\n", I12,
          "label_free"),
    # -- data and batches
    Guard("label range", "hf_projkd/data/loading.py", "    column = dataset.data.column(label_column)\n",
          "    return\n", REL, "labels_outside or arrow_column"),
    Guard("string labels", "hf_projkd/validation.py",
          '        if getattr(feature, "dtype", None) in ("string", "large_string"):\n', "        if False:\n", I12,
          "string_labels"),
    Guard("empty dataset", "hf_projkd/validation.py", "    if size == 0:\n", "    if False:\n", REL, "empty_datasets"),
    Guard("empty split", "hf_projkd/data/loading.py",
          "    empty = [split for split, data in dataset.items() if len(data) == 0]\n", "    empty = []\n", REL,
          "empty_datasets"),
    Guard("split class names agree", "hf_projkd/data/loading.py",
          "            check_parquet_class_names([f for files in parquet.values() for f in files])\n",
          "            pass\n", I12, "another_order_are_refused"),
    Guard("batch keys", "hf_projkd/validation.py", '    if "pixel_values" not in inputs:\n', "    if False:\n", REL,
          "missing_image"),
    Guard("float pixels", "hf_projkd/validation.py", "    if not pixels.is_floating_point():\n", "    if False:\n",
          I12, "bad_pixel_values and uint8"),
    Guard("channel count and layout", "hf_projkd/validation.py",
          "    if channels is not None and pixels.shape[1] != channels:\n", "    if False:\n", I12,
          "bad_pixel_values and off and not uint8"),
    Guard("images of different sizes", "hf_projkd/trainer.py",
          "        self.data_collator = CheckedCollator(self.data_collator)", "        pass", I12, "different_sizes"),
    Guard("undecodable image", "hf_projkd/data/loading.py",
          "    except (OSError, ValueError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError\n",
          "    except ZeroDivisionError as error:\n", I12, "undecodable"),
    Guard("bn batch of 1", "hf_projkd/validation.py", "    batch = args.per_device_train_batch_size\n", "    return\n",
          REL, "batch_of_one"),
    Guard("NaN eval samples: WARNING", "hf_projkd/trainer.py", "        if not finite.all():\n", "        if False:\n",
          I12, "nan_image"),
    Guard("NaN eval samples: no filter", "hf_projkd/config.py",
          "    logging_nan_inf_filter: bool = field(\n        default=False,",
          "    logging_nan_inf_filter: bool = field(\n        default=True,", I12, "nan_image"),
    # -- arguments and recipes
    Guard("fp16 on a CPU", "hf_projkd/trainer.py", '        if args.fp16 and args.device.type == "cpu":\n',
          "        if False:\n", I12, "fp16_on_a_cpu"),
    Guard("zero epochs", "hf_projkd/trainer.py", "        if args.max_steps <= 0 and args.num_train_epochs <= 0:\n",
          "        if False:\n", I12, "fp16_on_a_cpu"),
    Guard("recipes: max_train_samples 0 (CIFAR)", "recipes/cifar.py",
          '        for name in ("max_train_samples", "max_eval_samples", "image_size"):\n', "        for name in ():\n",
          I12, "max_train_samples_0"),
    Guard("recipes: max_train_samples 0 (ImageNet)", "hf_projkd/data/imagenet.py",
          '        for name in ("max_train_samples", "max_eval_samples", "num_train_examples"):\n',
          "        for name in ():\n", I12, "max_train_samples_0"),
    Guard("recipes: loader workers fit the cores", "recipes/imagenet.py",
          "    workers = max(0, min(10, (os.cpu_count() or 1) - 1))\n", "    workers = 10\n", I12,
          "defaults_fit_the_machine"),
    Guard("recipes: bf16 only where it runs", "recipes/imagenet.py",
          '    return {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),',
          '    return {"bf16": True,', I12, "defaults_fit_the_machine"),
    Guard("recipes: explicit learning_rate kept", "recipes/imagenet.py",
          "        recipe.base_learning_rate = None\n", "        pass\n", I12, "explicit_learning_rate"),
    Guard("recipes: no persistent workers without workers", "recipes/imagenet.py",
          '    if not args.dataloader_num_workers and "dataloader_persistent_workers" not in explicit:\n',
          "    if False:\n", I12, "test_13_"),
    Guard("recipes: flag suggestions", "hf_projkd/cli.py",
          '    return f" (did you mean {\', \'.join(hints)}? --help lists the flags)" if hints else " (--help lists '
          'the flags)"\n', '    return ""\n', I12, "misspelt"),
    Guard("ImageNet data arguments", "hf_projkd/data/imagenet.py",
          "        if self.interpolation not in INTERPOLATIONS:\n", "        if False:\n", I12,
          "data_arguments_are_validated"),
    Guard("augmentation policy", "hf_projkd/data/imagenet.py",
          "    except (AssertionError, KeyError, ValueError) as error:  # timm parses the policy string with asserts\n",
          "    except ZeroDivisionError as error:\n", I12, "augmentation_policy"),
    # -- during training
    Guard("non-finite loss guard", "hf_projkd/validation.py", "        names = sorted(self._bad)\n",
          "        names = []\n", REL, "non_finite"),
    Guard("non-finite save refusal", "hf_projkd/trainer.py", "            if not allow_non_finite:\n",
          "            if False:\n", I12, "test_6_"),
    # -- checkpoints
    Guard("manifest check on resume", "hf_projkd/checkpointing.py",
          "    return str(verify_checkpoint(resume_from_checkpoint))\n", "    return str(resume_from_checkpoint)\n",
          REL, "truncated_checkpoint"),
    Guard("checksums", "hf_projkd/checkpointing.py",
          "        if verify_checksums and checksum is not None and _sha256(path) != checksum:\n",
          "        if False:\n", I12, "test_5_"),
    Guard("skipped checkpoints: WARNING", "hf_projkd/checkpointing.py",
          '        logger.warning("Skipping the incomplete checkpoint %s: %s.", folder.name, problem)\n',
          "        pass\n", I12, "test_5_"),
    Guard("readable state files", "hf_projkd/checkpointing.py", "            check_readable(folder)\n",
          "            pass\n", I12, "broken_state_file"),
    Guard("rotate after manifest", "hf_projkd/trainer.py",
          "        limit, self.args.save_total_limit = self.args.save_total_limit, None\n",
          "        limit = self.args.save_total_limit\n", REL, "crash_before"),
    Guard("fingerprint", "hf_projkd/trainer.py", "                check_fingerprint(resume, self.run_fingerprint())\n",
          "                pass\n", I12, "test_4_"),
    Guard("run lock", "hf_projkd/trainer.py", "            self._run_lock = RunLock(args.output_dir).acquire()\n",
          "            pass\n", I12, "test_7_"),
    Guard("resume from args (recipes)", "hf_projkd/trainer.py",
          "            resume_from_checkpoint = args.resume_from_checkpoint\n",
          "            resume_from_checkpoint = None\n", I12, "test_1_"),
    Guard("no fresh start over checkpoints", "hf_projkd/checkpointing.py",
          "        if existing and not overwrite_output_dir:\n", "        if False:\n", I12, "test_1_"),
    Guard("output_dir is a folder", "hf_projkd/checkpointing.py", "    if path.exists() and not path.is_dir():\n",
          "    if False:\n", I12, "output_dir_that_is_a_file"),
    Guard("evaluate without data", "hf_projkd/trainer.py",
          "        if eval_dataset is None and self.eval_dataset is None:\n", "        if False:\n", I12,
          "evaluate_without"),
    # -- loading models
    Guard("local path check", "hf_projkd/loading.py", "    if looks_local and not path.exists():\n",
          "    if False:\n", REL, "cannot_be_loaded"),
    Guard("missing local folder named before the Hub's words", "hf_projkd/loading.py",
          '    return f"{local}{hub}\\nAs a Hub id it failed with {cause}"\n',
          '    return f"Could not load the model {name!r}: {cause}\\n{local}{hub}"\n', I12, "missing_local_teacher"),
    Guard("safetensors file check", "hf_projkd/checkpointing.py",
          "        _check_safetensors_layout(path)\n    except (OSError, ValueError) as error:\n",
          "        pass\n    except (OSError, ValueError) as error:\n", I12, "damaged_teacher_safetensors"),
    Guard("config.json is JSON", "hf_projkd/loading.py",
          "            data = json.loads(config.read_text())\n        except ValueError as error:\n",
          "            data = json.loads(config.read_text())\n        except ZeroDivisionError as error:\n", I12,
          "config_json_that_is_not_json"),
    Guard("timm pytorch_model.bin", "hf_projkd/loading.py",
          'TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")\n',
          'TIMM_WEIGHT_FILES = ("model.safetensors",)\n', I12, "pytorch_model_bin"),
    Guard("timm label_names read", "hf_projkd/loading.py",
          '    if config.get("label_names") and not num_labels:', "    if False:", I12, "test_14_"),
    Guard("timm default weights' metadata dropped", "hf_projkd/families.py",
          "    for key in _TIMM_WEIGHT_METADATA:\n", "    for key in ():\n", I12, "test_14_a_saved"),
]

SANITY_MESSAGE = "guard_mutations: the mutated scratch copy was imported"


def _pytest(work: Path, files: list[str], select: str | None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", *files, "-q", "-x", "-p", "no:cacheprovider"]
    if select:
        command += ["-k", select]
    env = {**os.environ, "PYTHONPATH": str(work), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, cwd=work, capture_output=True, text=True, env=env)


def _summary(result: subprocess.CompletedProcess) -> str:
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else result.stderr.strip()[-200:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="Run only the guards whose name contains this.")
    options = parser.parse_args()
    guards = [g for g in GUARDS if options.only is None or options.only.lower() in g.name.lower()]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        ignore = shutil.ignore_patterns("__pycache__")
        for folder in ("hf_projkd", "tests", "recipes"):
            shutil.copytree(ROOT / folder, work / folder, ignore=ignore)
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")

        init = work / "hf_projkd" / "__init__.py"
        original = init.read_text()
        init.write_text(f"raise ImportError({SANITY_MESSAGE!r})\n" + original)
        planted = _pytest(work, [I12], "test_3_")
        init.write_text(original)
        if SANITY_MESSAGE not in planted.stdout + planted.stderr:
            print("CHECK FAILED: the tests did not import the scratch copy of hf_projkd.")
            return 1

        for guard in guards:
            if (work / guard.file).read_text().count(guard.code) != 1:
                print(f"CHECK FAILED: {guard.name}: the guarded code changed in {guard.file}; update this script.")
                return 1
        files = sorted({g.test_file for g in guards})
        baseline = _pytest(work, files, " or ".join(f"({g.select})" for g in guards))
        if baseline.returncode != 0:
            print(f"CHECK FAILED: the guards' tests fail without any mutation: {_summary(baseline)}")
            print(baseline.stdout[-3000:])
            return 1
        print(f"unmutated: {_summary(baseline)}", flush=True)

        missed = 0
        for guard in guards:
            path = work / guard.file
            original = path.read_text()
            path.write_text(original.replace(guard.code, guard.without))
            try:
                result = _pytest(work, [guard.test_file], guard.select)
            finally:
                path.write_text(original)
            caught = result.returncode == 1 and "failed" in _summary(result)
            missed += not caught
            print(f"{'CAUGHT' if caught else 'MISSED'}  {guard.name:46s} {Path(guard.test_file).name} -k "
                  f"'{guard.select}': {_summary(result)}", flush=True)
    print(f"{len(guards) - missed} of {len(guards)} guards caught in {time.perf_counter() - start:.0f} s.")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
