"""What the teacher metrics cost at evaluation: ``evaluate()`` with ``eval_teacher_metrics`` off, on (first
evaluation: the teacher runs once over the eval set) and on again (its logits cached: agreement and KL only).

ResNet56 teacher, ResNet20 student (CIFAR nets), ``--images`` random 32 px images, batch 256, on this machine's
CPU (or GPU); each evaluation is repeated ``--repeats`` times and the median taken (process CPU time on the CPU,
where other jobs inflate wall time).

    python benchmarks/eval_teacher_cost.py --images 2000 --repeats 3 --out benchmarks/results/eval_teacher_cost_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from hf_projkd import DistillationArguments, DistillationTrainer  # noqa: E402
from hf_projkd.models import create_cifar_model  # noqa: E402


def trainer(folder: str, images: int, teacher_metrics: bool) -> DistillationTrainer:
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"pixel_values": torch.randn(images, 3, 32, 32, generator=g).numpy(),
                              "labels": torch.randint(0, 10, (images,), generator=g).numpy()}).with_format("torch")
    torch.manual_seed(0)
    args = DistillationArguments(output_dir=folder, per_device_eval_batch_size=256, report_to="none",
                                 use_cpu=not torch.cuda.is_available(), eval_teacher_metrics=teacher_metrics,
                                 disable_tqdm=True)
    return DistillationTrainer(create_cifar_model("resnet20", 10), create_cifar_model("resnet56", 10), args,
                               train_dataset=data, eval_dataset=data)


def timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)
    rows: dict[str, list[tuple[float, float]]] = {"off": [], "on, first evaluation": [], "on, later evaluations": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(cli.repeats):
            rows["off"].append(timed(trainer(f"{folder}/off", cli.images, False).evaluate))
            measured = trainer(f"{folder}/on", cli.images, True)
            rows["on, first evaluation"].append(timed(measured.evaluate))
            rows["on, later evaluations"].append(timed(measured.evaluate))
    clock = 0 if torch.cuda.is_available() else 1
    base = statistics.median(t[clock] for t in rows["off"])
    lines = [
        "# Cost of the teacher metrics at evaluation", "",
        f"Command: `python benchmarks/eval_teacher_cost.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
        f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}."
        f" ResNet56 teacher -> ResNet20 student, {cli.images} images of 32 px, batch 256; median of {cli.repeats}.",
        "", f"| eval_teacher_metrics | wall (s) | process CPU time (s) | vs off ({'wall' if clock == 0 else 'CPU'}) |",
        "|---|---|---|---|",
    ]
    for name, values in rows.items():
        wall, cpu = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {(cpu if clock else wall) / base:.2f}x |")
    lines += ["", "The first evaluation runs the teacher over the eval set once (its logits are then cached in host "
              "memory: N x classes floats); later evaluations only add the agreement and KL over the cached logits."]
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
