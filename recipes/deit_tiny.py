"""DeiT-Ti distilled from RegNetY-160 with SRD on ImageNet-1k (paper: 77.2 % top-1; DeiT-Ti alone 72.2 %).

Settings: ``recipes/configs/deit.yaml`` (DeiT's recipe: 300 epochs, AdamW wd 0.05 without decay on 1-d parameters,
lr 5e-4 x total batch / 512, cosine after 5 warmup epochs, bf16, RandAugment, mixup 0.8, cutmix 1.0, label
smoothing 0.1, random erasing 0.25, repeated augmentation x3). DeiT's total batch is 1024 (8 processes x 128).

    accelerate launch recipes/deit_tiny.py [--config my.yaml] [--any_field value ...]
    python recipes/deit_tiny.py --help
"""

from imagenet import main

DEFAULTS = {"student": "deit-tiny", "output_dir": "outputs/deit_tiny_srd"}

if __name__ == "__main__":
    main("deit.yaml", DEFAULTS)
