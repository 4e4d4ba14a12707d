"""Train a CIFAR teacher with cross-entropy and the CRD protocol; the distillation recipes load its output folder.

``python recipes/train_teacher.py --student resnet32x4 --output_dir teachers/resnet32x4_cifar100`` trains a CIFAR
architecture from scratch; ``--student <timm or transformers id>`` fine-tunes a pretrained model with a new head.
Then: ``python recipes/cifar.py --teacher teachers/resnet32x4_cifar100 --student resnet8x4 --method srd+kd``.
"""

from __future__ import annotations

import json
import sys

from hf_projkd import DistillationArguments
from hf_projkd.cli import parse_recipe_args
from hf_projkd.recipes_cifar import CifarRecipeArguments, recipe_defaults, run_cifar


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--method" in argv and argv[argv.index("--method") + 1] != "ce":
        raise SystemExit("train_teacher.py trains with cross-entropy only: drop --method (use recipes/cifar.py).")
    defaults = {**recipe_defaults(["--method", "ce"]), "method": "ce", "student": "resnet32x4"}
    recipe, args = parse_recipe_args((CifarRecipeArguments, DistillationArguments), defaults, argv)
    if recipe.method != "ce":
        raise SystemExit("train_teacher.py trains with cross-entropy only: remove 'method' from the --config file.")
    results = run_cifar(recipe, args)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
