#!/usr/bin/env bash
# The GPU measurements of the project (docs/scale_and_speed.md), in one command for a lent H100/H200: under 8 minutes,
# each part under its own time limit so that a partial run still reports. Writes into $OUT (default
# benchmarks/results/gpu): the reports named below and environment.txt (device, driver, versions).
#
#   bash benchmarks/gpu_suite.sh                      # on the GPU machine, from the repository root
#   DATA=.gpu_data bash benchmarks/gpu_suite.sh       # + the full CIFAR-10 run, if .gpu_data holds cifar10-jpeg/
#                                                     #   and cifar10_resnet56.safetensors (copied from ../shared)
set -uo pipefail
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
start=$(date +%s)
left() { echo $(( 470 - ($(date +%s) - start) )); }
run() {  # run <seconds> <name> <command...>: one part, its output in $out/<name>.log
  local limit=$1 name=$2; shift 2
  if [ "$(left)" -lt "$limit" ]; then echo "SKIPPED $name: $(left) s left, it needs $limit" | tee -a "$out/suite.log"; return; fi
  echo "== $name ($(date +%T))" | tee -a "$out/suite.log"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/suite.log"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python -c "import torch, transformers, timm, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| timm', timm.__version__, '| accelerate', accelerate.__version__)"; python -c "import torchdistill; print('torchdistill', torchdistill.__version__)" 2>&1 | tail -1; } > "$out/environment.txt" 2>&1

# 1. ImageNet scale: SRD step vs student step + teacher forward, and vs torchdistill (batch 256, 224 px)
run 170 throughput_imagenet python benchmarks/throughput.py --device cuda --pairs resnet34_18 regnety160_deit_tiny \
    --bf16 --channels-last --teacher-bf16 --warmup 3 --repeats 5 --steps 4 --out "$out/throughput_imagenet.md"
# 2. the DeiT-Ti recipe step (random 224 px images in memory: the step, not JPEG decoding)
run 100 recipe_deit_tiny python benchmarks/recipe_speed.py --recipe deit_tiny --device cuda --batch 256 --warmup 10 \
    --steps 40 --workers 2 --set compile_loss_terms=true --out "$out/recipe_speed_deit_tiny.json"
# 3. the CIFAR CRD-protocol step, data included: default path, on-device data, on-device + CUDA graphs
run 50 recipe_cifar_default python benchmarks/recipe_speed.py --recipe cifar --device cuda --batch 64 --warmup 30 \
    --steps 300 --workers 2 --out "$out/recipe_speed_cifar_default.json"
run 50 recipe_cifar_on_device python benchmarks/recipe_speed.py --recipe cifar --device cuda --batch 64 --warmup 30 \
    --steps 300 --workers 0 --set data_on_device=true --out "$out/recipe_speed_cifar_on_device.json"
run 110 recipe_cifar_graphs python benchmarks/recipe_speed.py --recipe cifar --device cuda --batch 64 --warmup 60 \
    --steps 300 --workers 0 --set data_on_device=true torch_compile=true torch_compile_mode=reduce-overhead \
    teacher_compile=true --out "$out/recipe_speed_cifar_graphs.json"
# 4. can the ImageNet loader feed the DeiT-Ti step on this host's cores?
step=$(python -c "import json; print(json.load(open('$out/recipe_speed_deit_tiny.json'))['images_per_second'])" 2>/dev/null || echo 2600)
run 90 imagenet_loader python benchmarks/imagenet_loader_speed.py --images 1536 --workers $(( $(nproc) - 1 )) \
    --batch 128 --passes 2 --step_images_per_second "$step" --out "$out/imagenet_loader_speed.json"
run 60 imagenet_loader_on_device python benchmarks/imagenet_loader_speed.py --images 1536 --batch 256 --passes 2 \
    --decode_on_device --device cuda --step_images_per_second "$step" --out "$out/imagenet_loader_speed_on_device.json"
# 5. if time remains: full CIFAR-10, the four methods, on the fast path
if [ -n "${DATA:-}" ] && [ -d "$DATA/cifar10-jpeg" ]; then
  run "$(( $(left) - 10 ))" cifar10_full python benchmarks/cifar10_mini.py --data "$DATA/cifar10-jpeg" \
      --teacher "$DATA/cifar10_resnet56.safetensors" --student resnet20 --train_samples 50000 --eval_samples 10000 \
      --epochs 4 --seeds 0 --fast --bf16 --output "$out/cifar10_full_gpu.md"
fi
echo "done after $(( $(date +%s) - start )) s" | tee -a "$out/suite.log"
