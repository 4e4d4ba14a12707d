"""The paper's ablations on CIFAR-10 with projector diagnostics: ``python recipes/ablation.py [--train_samples N]``.

Runs CE, SRD (batch norm + linear + LogSum) and its variants (normalisation none / L2, MLP projector, L2 /
smooth-L1 loss) with the shared ResNet56 teacher, then writes ``<prefix>.md`` (tables), ``<prefix>.json``
(results and diagnostic histories) and the PNGs into ``--output_dir`` (default: benchmarks/results). All options:
``hf_projkd.ablation.AblationOptions``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import HfArgumentParser  # noqa: E402

from hf_projkd.ablation import AblationOptions, replot, run_ablation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULTS = {
    "data": str(SHARED / "data" / "cifar10-jpeg"),
    "teacher": str(SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet56.safetensors"),
    "output_dir": str(ROOT / "benchmarks" / "results"),
}


def main(argv: list[str] | None = None) -> dict | list[Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(AblationOptions)
    parser.set_defaults(**DEFAULTS)
    (options,) = parser.parse_args_into_dataclasses(argv)
    if options.replot:
        return replot(options.output_dir, options.prefix)
    options.command = options.command or "python recipes/ablation.py " + " ".join(shlex.quote(a) for a in argv)
    return run_ablation(options)


if __name__ == "__main__":
    main()
