"""CIFAR-10 mini accuracy benchmark on CPU: ce / kd / srd / srd+kd (optionally dkd, srd+dkd), same budget and seeds.

Teacher: the shared CIFAR-10 ResNet56 (83.20 % on the full test split). Student: a from-scratch CIFAR ResNet.
Every method runs through ``recipes/cifar.py`` (``parse`` + ``run``) with the CRD protocol of
``recipes/configs/crd.yaml`` (SGD 0.9, lr 0.05, wd 5e-4, batch 64, lr x0.1 at 62.5/75/87.5 % of the run, crop 32
pad 4 + flip) on a fixed random train subset and a few epochs; only the loss fields of ``hf_projkd.METHOD_PRESETS``
differ between methods. Writes the markdown table itself:

    python benchmarks/cifar10_mini.py --train_samples 4000 --epochs 2 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import cifar  # noqa: E402

from hf_projkd import METHODS, adapter_for, load_image_classifier  # noqa: E402
from hf_projkd.data.cifar import CifarCollator, CifarTensorDataset, DecodedImages, DecodedSplits  # noqa: E402

BATCH = 64  # the CRD protocol's (recipes/configs/crd.yaml)
SHARED = Path(__file__).resolve().parents[2] / "shared"
RESULTS = Path(__file__).resolve().parent / "results"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "cifar10-jpeg"))
    teacher = SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet56.safetensors"
    parser.add_argument("--teacher", default=str(teacher))
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--methods", nargs="+", default=["ce", "kd", "srd", "srd+kd"], choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--train_samples", type=int, default=4000)
    parser.add_argument("--eval_samples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--output", default=str(RESULTS / "cifar10_mini_cpu.md"))
    parser.add_argument(
        "--holdout", type=int, default=0,
        help="Evaluate on this many held-out TRAINING images (disjoint from the train subset) instead of the test "
        "split: for investigations that must not look at the test split.",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE",
        help="Override recipe / DistillationArguments fields for every method, e.g. --set feature_loss_weight=1.",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (for the full-data GPU version).")
    parser.add_argument("--fast", action="store_true", help="The recipe's GPU fast path (--data_on_device true, "
                        "compiled with CUDA graphs): data on the GPU, crop/flip per batch on the GPU.")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads; 1 is several times faster when other jobs share the cores (less spin-waiting).",
    )
    return parser.parse_args()


@torch.no_grad()
def teacher_top1(teacher: torch.nn.Module, dataset: CifarTensorDataset, collator: CifarCollator) -> float:
    """Top-1 (%) of the teacher on the eval subset, with its own input normalisation."""
    correct = 0
    for start in range(0, len(dataset), 256):
        batch = collator(dataset.__getitems__(list(range(start, min(start + 256, len(dataset))))))
        inputs = batch.get("teacher_pixel_values", batch["pixel_values"])
        correct += (teacher(inputs).logits.argmax(-1) == batch["labels"]).sum().item()
    return 100.0 * correct / len(dataset)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, python {platform.python_version()}"
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, python {platform.python_version()}"
    )


def write_markdown(path: Path, argv: str, setup: dict, runs: list[dict], elapsed: float, done: bool) -> None:
    lines = [
        f"# CIFAR-10 (JPEG q75) benchmark on {'GPU' if torch.cuda.is_available() else 'CPU'}",
        "",
        f"Command: `{argv}`",
        "",
        f"Machine: {machine()}.",
        "",
        f"Setup: teacher {setup['teacher_name']} (top-1 {setup['teacher_top1']:.2f} % on the evaluation images; "
        f"83.20 % on the full test split), student {setup['student']} from scratch, "
        f"{setup['train_samples']} training images (fixed random subset, seed 0), {setup['epochs']:g} epochs "
        f"({setup['steps']} steps of batch {BATCH}), evaluation on "
        f"{setup['eval_on']}, final checkpoint (no best-epoch selection). CRD protocol: SGD "
        "momentum 0.9, lr 0.05, weight decay 5e-4, lr x0.1 at 62.5/75/87.5 % of the run, random crop 32 pad 4 + "
        "flip. Loss per method: `hf_projkd.METHOD_PRESETS` (kd: 0.1 CE + 0.9 KL at T=4; srd: CE + "
        "2 LogSum(alpha 4) on BN-normalised linear projections; srd+kd: the paper's CE + 2 LogSum + KL at T=1).",
        "",
        *([f"Overrides for every method: `{setup['overrides']}`.", ""] if setup["overrides"] else []),
        "| method | top-1 mean (%) | spread (std / min-max) | per seed | wall s / run |",
        "|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in runs):
        method_runs = [r for r in runs if r["method"] == method]
        scores = [r["top1"] for r in method_runs]
        walls = [r["wall_seconds"] for r in method_runs]
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        lines.append(
            f"| {method} | {statistics.mean(scores):.2f} | {std:.2f} / {min(scores):.2f}-{max(scores):.2f} | "
            f"{', '.join(f'{s:.2f}' for s in scores)} (seeds {', '.join(str(r['seed']) for r in method_runs)}) "
            f"| {statistics.mean(walls):.0f} |"
        )
    status = "complete" if done else "IN PROGRESS (partial table)"
    lines += ["", f"Total wall time: {elapsed / 60:.1f} min ({status}).", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    options = parse()
    if options.threads:
        torch.set_num_threads(options.threads)
    argv = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    start = time.perf_counter()
    recipe = cifar.CifarRecipeArguments(
        method="ce", student=options.student, teacher=options.teacher, dataset=options.data,
        max_train_samples=options.train_samples + options.holdout, max_eval_samples=options.eval_samples,
    )
    data = cifar.load_data(recipe)
    if options.holdout:  # the first train_samples rows are the same subset as without --holdout
        pixels, labels, n = data.train.pixels, data.train.labels, options.train_samples
        data = DecodedSplits(DecodedImages(pixels[:n], labels[:n]), DecodedImages(pixels[n:], labels[n:]),
                             data.class_names)
    overrides = [item.split("=", 1) for item in options.set]
    teacher = load_image_classifier(options.teacher)
    declared = adapter_for(teacher).input_normalization()
    collator = CifarCollator(recipe.mean, recipe.std, *(declared.values if declared else (recipe.mean, recipe.std)))
    setup = {
        "teacher_name": Path(options.teacher).stem,
        "teacher_top1": teacher_top1(teacher, CifarTensorDataset(data.eval), collator),
        "student": options.student,
        "train_samples": len(data.train),
        "eval_samples": len(data.eval),
        "eval_on": (
            f"{len(data.eval)} held-out training images (not the test split)" if options.holdout
            else f"the first {len(data.eval)} test images"
        ),
        "overrides": dict(overrides),
        "epochs": options.epochs,
        "steps": int(-(-len(data.train) // BATCH) * options.epochs),
    }
    print(json.dumps(setup), flush=True)
    runs: list[dict] = []
    output = Path(options.output)
    log = output.with_suffix(".jsonl")
    log.write_text("")
    device = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    fast = ["--data_on_device", "true", "--torch_compile", "true", "--torch_compile_mode", "reduce-overhead",
            "--teacher_compile", "true"] if options.fast else []
    for method in options.methods:
        for seed in options.seeds:
            with tempfile.TemporaryDirectory() as folder:
                run_argv = [
                    "--method", method, "--student", options.student, "--teacher", options.teacher,
                    "--dataset", options.data, "--num_train_epochs", str(options.epochs), "--seed", str(seed),
                    "--output_dir", folder, "--save_strategy", "no", "--disable_tqdm", "true",
                    "--logging_steps", "25", "--bf16", str(options.bf16).lower(), *device, *fast,
                    *[token for name, value in overrides for token in (f"--{name}", value)],
                ]
                run_recipe, args = cifar.parse(run_argv)
                result = cifar.run(run_recipe, args, data)
            runs.append(result)
            with log.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
            write_markdown(output, argv, setup, runs, time.perf_counter() - start, done=False)
    write_markdown(output, argv, setup, runs, time.perf_counter() - start, done=True)
    print(output.read_text())


if __name__ == "__main__":
    main()
