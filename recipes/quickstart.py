"""Offline quickstart: distil a CIFAR ResNet8 from a ResNet20 on scikit-learn's digits and compare CE / KD / SRD.

    python recipes/quickstart.py                      # or: accelerate launch recipes/quickstart.py
    python recipes/quickstart.py --student_epochs 40 --logsum_exponent 2 --results_file results.md

Every DistillationArguments / TrainingArguments field is a flag; --config FILE.yaml sets many at once.
"""

from hf_projkd.quickstart import main

if __name__ == "__main__":
    main()
