"""Train a CIFAR teacher with cross-entropy and the CRD protocol; the distillation recipes load its output folder.

``python recipes/train_teacher.py --student resnet32x4 --output_dir teachers/resnet32x4_cifar100`` trains a CIFAR
architecture from scratch; ``--student <timm or transformers id>`` fine-tunes a pretrained model with a new head.
Then: ``python recipes/cifar.py --teacher teachers/resnet32x4_cifar100 --student resnet8x4 --method srd+kd``.
Same flags as ``recipes/cifar.py`` (``--help``), with the method fixed to ``ce``.
"""

from __future__ import annotations

import json
import sys

from cifar import parse, run


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, args = parse(argv, defaults={"method": "ce", "student": "resnet32x4"})
    if recipe.method != "ce":
        raise SystemExit(f"train_teacher.py trains with cross-entropy only, got method {recipe.method!r}: drop "
                         "--method (and 'method' from the --config file), or use recipes/cifar.py to distil.")
    results = run(recipe, args)
    if args.should_log:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
