"""Can the ImageNet input pipeline feed the GPU? Decode + DeiT augmentation images/s against the step's images/s.

Writes ``--images`` synthetic JPEGs at ImageNet's typical size (500x375, photo-like content so that they compress
like photos) into an image folder, loads it with ``hf_projkd.data.load_imagenet`` and the DeiT recipe's train
transform (bicubic RandomResizedCrop 224, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25), and times
a ``DataLoader`` with ``--workers`` processes and the recipe's collator over ``--passes`` passes after one warm-up
pass. The verdict compares with ``--step_images_per_second`` (e.g. the DeiT-Ti step of
``benchmarks/recipe_speed.py``): the loader should deliver at least 1.5x the step's rate. ``--decode_on_device``
times the recipe's ``--decode_on_device true`` path instead (encoded bytes read in the main process, decoded and
augmented by ``DeviceImageCollator`` on ``--device``).

    python benchmarks/imagenet_loader_speed.py --workers 15 --step_images_per_second 2600 \\
        --out benchmarks/results/imagenet_loader_speed_gpu_host.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hf_projkd.data.device_images import DeviceImageCollator  # noqa: E402
from hf_projkd.data.imagenet import ImageNetDataArguments, collate_images, load_imagenet  # noqa: E402

FEED_GOAL = 1.5


def write_images(folder: Path, count: int, classes: int = 10) -> None:
    """Photo-like JPEGs (smooth gradients + texture + noise) of 500x375, quality 90, in <split>/<class>/ folders."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    for i in range(count):
        base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80)) for c in range(3)], -1)
        pixels = (base * 80 + 128 + rng.normal(0, 12, (375, 500, 3))).clip(0, 255).astype("uint8")
        target = folder / "train" / f"class{i % classes}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / f"{i}.jpg", quality=90)
    (folder / "validation" / "class0").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / "validation" / "class0" / "0.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--step_images_per_second", type=float, default=None)
    parser.add_argument("--decode_on_device", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_images(Path(folder), cli.images)
        written = time.perf_counter() - start
        data_args = ImageNetDataArguments(dataset_name=folder, eval_split="validation",
                                          decode_on_device=cli.decode_on_device)
        data = load_imagenet(data_args)
        if cli.decode_on_device:  # the collator works in the main process, as the recipe runs it
            cli.workers, collator = 0, DeviceImageCollator(data_args, cli.device)
        else:
            collator = collate_images
        loader = DataLoader(data.train, batch_size=cli.batch, shuffle=True, num_workers=cli.workers,
                            collate_fn=collator, persistent_workers=cli.workers > 0, drop_last=True)
        for _ in loader:  # warm-up pass: workers start, files enter the page cache
            pass
        start, seen = time.perf_counter(), 0
        for _ in range(cli.passes):
            for batch in loader:
                seen += batch["pixel_values"].shape[0]
        if cli.decode_on_device and torch.device(cli.device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    rate = seen / elapsed
    result = {
        "benchmark": "ImageNet input pipeline: JPEG decode + DeiT train transform + collate, images/s"
                     + (f" (decode_on_device, {cli.device})" if cli.decode_on_device else ""),
        "command": "python benchmarks/imagenet_loader_speed.py " + " ".join(
            f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(cli).items()
            if v is not None and v is not False and k != "out") + f" --out {cli.out}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "workers": cli.workers, "batch": cli.batch, "images": cli.images, "image_size": "500x375 JPEG q90",
        "seconds_to_write_images": round(written, 1),
        "loader_images_per_second": round(rate, 1),
        "per_worker_images_per_second": round(rate / max(cli.workers, 1), 1),
    }
    if cli.step_images_per_second:
        ratio = rate / cli.step_images_per_second
        result.update(step_images_per_second=cli.step_images_per_second, loader_to_step_ratio=round(ratio, 2),
                      verdict=f"{'keeps up' if ratio >= FEED_GOAL else 'does NOT keep up'} (goal >= {FEED_GOAL}x)")
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
