"""ResNet-18 (timm, from scratch) distilled from ResNet-34 (torchvision weights) with SRD on ImageNet-1k
(paper: 71.63 %, re-run 71.87-71.92; ResNet-18 alone 69.76 %).

Settings: ``recipes/configs/imagenet_resnet18.yaml`` (100 epochs, SGD 0.9, lr 0.1 per 256 images, x0.1 at epochs
30/60/90, wd 1e-4, RandomResizedCrop 224 + flip; LogSum w=2, alpha=4, KL T=1).

    accelerate launch recipes/imagenet_resnet18.py [--config my.yaml] [--any_field value ...]
    python recipes/imagenet_resnet18.py --help
"""

from imagenet import main

DEFAULTS: dict = {}

if __name__ == "__main__":
    main("imagenet_resnet18.yaml", DEFAULTS)
