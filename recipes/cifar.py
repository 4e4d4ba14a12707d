"""CIFAR distillation recipe: ``python recipes/cifar.py --teacher <path or id> --student resnet8x4 --method srd+kd``.

Methods: ce, kd, dkd, srd, srd+kd (the paper's recipe), srd+dkd. Dataset by Hub id (default uoft-cs/cifar100) or
local parquet / image folder (``--dataset ../shared/data/cifar10-jpeg``). CRD protocol defaults; every field of
``CifarRecipeArguments`` and ``DistillationArguments`` can be set from ``--config file.yaml`` or the CLI.
"""

from __future__ import annotations

import json
import sys

from hf_projkd import DistillationArguments
from hf_projkd.cli import parse_recipe_args
from hf_projkd.recipes_cifar import CifarRecipeArguments, recipe_defaults, run_cifar


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, args = parse_recipe_args((CifarRecipeArguments, DistillationArguments), recipe_defaults(argv), argv)
    results = run_cifar(recipe, args)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
