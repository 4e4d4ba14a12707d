"""DeiT-S distilled from RegNetY-160 with SRD on ImageNet-1k (paper: 82.1 % top-1; DeiT-S alone 79.8 %).

Same settings as ``deit_tiny.py`` (``recipes/configs/deit.yaml``) with the DeiT-S student (384-d, 6 heads).

    accelerate launch recipes/deit_small.py [--config my.yaml] [--any_field value ...]
    python recipes/deit_small.py --help
"""

from imagenet import main

DEFAULTS = {"student": "deit-small", "output_dir": "outputs/deit_small_srd"}

if __name__ == "__main__":
    main("deit.yaml", DEFAULTS)
