#!/usr/bin/env bash
# The prepared GPU run of benchmarks/throughput.py: bf16, then + channels_last, then + torch.compile, each with
# its own time limit so that the whole script stays under 8 minutes on one H100/H200. Writes
# benchmarks/results/throughput_gpu.md (the three reports one after the other) and the raw .json files.
# torchdistill (variant d) runs only if it is importable by this python.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
common=(--device cuda --bf16 --batch-size 256 --warmup 3 --repeats 10 --steps 5)
timeout 120 python benchmarks/throughput.py "${common[@]}" --out "$out/throughput_gpu_bf16.md"
timeout 120 python benchmarks/throughput.py "${common[@]}" --channels-last --out "$out/throughput_gpu_bf16_cl.md"
timeout 200 python benchmarks/throughput.py "${common[@]}" --channels-last --compile \
    --out "$out/throughput_gpu_bf16_cl_compile.md"
cat "$out/throughput_gpu_bf16.md" "$out/throughput_gpu_bf16_cl.md" "$out/throughput_gpu_bf16_cl_compile.md" \
    > "$out/throughput_gpu.md"
