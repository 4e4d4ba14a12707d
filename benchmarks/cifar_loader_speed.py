"""Is the CIFAR input pipeline the bottleneck? Loader images/s against training-step images/s on this machine.

Compares (1) decoding every JPEG through PIL for each sample of each epoch (a ``set_transform`` style pipeline),
(2) ``hf_projkd.data.cifar``: decode once, then batched crop + flip on uint8 tensors and a normalising collator,
with (3) the training step it feeds (student train step, teacher forward, both channels_last as in the recipe).

    python benchmarks/cifar_loader_speed.py
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Image  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hf_projkd.data.cifar import CifarCollator, CifarTensorDataset, decode_image_dataset, random_crop_flip  # noqa: E402
from hf_projkd.data.loading import load_image_dataset  # noqa: E402
from hf_projkd.models import CIFAR100_MEAN, CIFAR100_STD, create_cifar_model, load_cifar10_resnet  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
OUTPUT = Path(__file__).resolve().parent / "results" / "cifar_loader_speed_cpu.md"
BATCH = 64
BATCHES = 40


class PerStepPILDataset(torch.utils.data.Dataset):
    """The naive pipeline: PIL-decode the JPEG bytes of each sample every time it is fetched, then augment."""

    def __init__(self, images: list[bytes], labels: list[int]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        array = np.array(PILImage.open(io.BytesIO(self.images[index])).convert("RGB"))
        pixels = random_crop_flip(torch.from_numpy(array).permute(2, 0, 1)[None])[0]
        return {"pixel_values": pixels, "labels": torch.tensor(self.labels[index])}


def loader_rate(dataset: torch.utils.data.Dataset, collator: CifarCollator) -> float:
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=collator, drop_last=True)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(BATCHES):
        next(iterator)
    return BATCHES * BATCH / (time.perf_counter() - start)


def step_rate(step, steps: int = 5) -> float:
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1: shared cores).")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    split = load_image_dataset(str(SHARED / "data" / "cifar10-jpeg"))["train"]
    start = time.perf_counter()
    decoded = decode_image_dataset(split, "img", "label")
    decode_rate = len(decoded) / (time.perf_counter() - start)

    raw = split.cast_column("img", Image(decode=False)).select(range(BATCH * (BATCHES + 2)))
    naive = PerStepPILDataset([item["bytes"] for item in raw["img"]], list(raw["label"]))
    collator = CifarCollator(CIFAR100_MEAN, CIFAR100_STD, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    fast = CifarTensorDataset(decoded, augment=True)
    rows = [
        ("PIL decode + augment per sample, every epoch", loader_rate(naive, collator)),
        ("hf_projkd: decoded once, batched crop+flip + collator", loader_rate(fast, collator)),
    ]

    batch = collator(CifarTensorDataset(decoded, True).__getitems__(list(range(BATCH))))
    x = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
    teacher = load_cifar10_resnet(SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet56.safetensors")
    teacher = teacher.to(memory_format=torch.channels_last)
    for name in ("resnet8", "resnet20"):
        student = create_cifar_model(name, num_labels=10).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

        def train_step(model=student, opt=optimizer) -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x).logits, batch["labels"]).backward()
            opt.step()

        rows.append((f"{name} student train step (fwd+bwd+SGD)", step_rate(train_step)))

    def teacher_step() -> None:
        with torch.no_grad():
            teacher(x)

    rows.append(("resnet56 teacher forward (no grad)", step_rate(teacher_step)))

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# CIFAR loader speed vs. training step (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; the cores were shared with other jobs, so absolute rates are noisy.",
        "",
        f"One-time decode of the 50,000 CIFAR-10 training JPEGs: {decode_rate:,.0f} images/s "
        f"({len(decoded) / decode_rate:.1f} s).",
        "",
        f"| stage (batch {BATCH}, {BATCHES} batches for loaders) | images/s |",
        "|---|---|",
        *[f"| {name} | {rate:,.0f} |" for name, rate in rows],
        "",
    ]
    OUTPUT.write_text("\n".join(lines))
    print(OUTPUT.read_text())


if __name__ == "__main__":
    main()
