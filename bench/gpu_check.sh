#!/usr/bin/env bash
# One pass over every CUDA path and GPU benchmark on one GPU, each figure written as text.
#
#   bench/gpu_check.sh [FOLDER]                 # on a GPU machine: figures to FOLDER, else $OUT, else gpu_check_out
#   bench/gpu_check.sh --cpu-dry-run [FOLDER]   # the same steps at toy sizes on the CPU (tests the script)
#
# Every step runs under its own `timeout` (cut further so that the whole run stays within 8 minutes) and
# writes FOLDER/<step>.txt: the command, then its output. A failing step does not stop the others.
# FOLDER/summary.txt lists each step's status (ok, failed (exit N), timed out, skipped) and seconds.
# Bulky files (demo data, checkpoints, features) go to $GPU_CHECK_WORK, default work_dirs/gpu_check.
# Exit status: 0 when every step is ok, 1 otherwise. docs/benchmarks.md says what each step measures.
set -u

dry_run=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
    dry_run=1
    shift
fi
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
work=${GPU_CHECK_WORK:-work_dirs/gpu_check}
mkdir -p "$work"
work=$(cd "$work" && pwd)
python=${PYTHON:-python3}

budget=480  # seconds for the whole run; each step's limit below is cut to what is left
slowdown=1
if (( dry_run )); then
    slowdown=4  # Python starts slowly on a small shared CPU; the dry run checks the steps, not their speed
    device=cpu; net_small=vit_nano; net_large=vit_mini
    backbone_args=(--batch-size 2 --steps 1 --warmup 1)
    step_args=(--network vit_nano --batch-size 8 --num-classes 50 --steps 1 --warmup 1 --repeats 1)
    compile_args=(--warmup 2)
    dpap_args=(--devices cpu --perturb-batches 8 --cpu-batch 8 --rounds 1)
    pfc_args=(--classes 1000 2000 --device cpu --skip-memory --steps 1 --warmup 1)
    plan_args=(--shapes vit_nano:8:50:1.0:fp32)
    demo_args=(--num-train-ids 8 --images-per-id 4 --num-val-ids 4 --num-pairs 20 --num-ijb-ids 5
               --templates-per-id 2 --workers 1)
    step_precision=fp32  # CPU autocast to bf16 is many times slower than fp32 here
    train_args=(--device cpu --set precision=fp32 batch_size=8 num_classes=0 num_image=0 num_workers=0)
    total_steps=4; eval_precision=--bf16; eval_args=(--device cpu --batch-size 16 --num-workers 0)
    cpu_workers=0
    # Inductor needs minutes on a small CPU: the dry run traces with dynamo and runs the graphs eagerly.
    export TORCH_COMPILE_OVERRIDE_BACKENDS=">=0:aot_eager"
else
    device=cuda; net_small=vit_s; net_large=vit_l_dp005_mask_005
    backbone_args=(--batch-size 128 --steps 6 --warmup 2)
    step_args=(--network vit_s --batch-size 256 --num-classes 85742 --steps 8 --warmup 2 --repeats 2)
    compile_args=(--warmup 3 --repeats 1)
    dpap_args=(--devices cuda --perturb-batches 512)
    pfc_args=(--classes 1000000 2000000 --device cuda)
    plan_args=()  # bench_plan's shapes: vit_s at batch 256 (train_step_eager's), vit_l with checkpointing
    demo_args=(--seed 0)
    step_precision=bf16
    train_args=(--device cuda --set precision=fp16)
    total_steps=50; eval_precision=--fp16; eval_args=(--device cuda)
    cpu_workers=4
fi
half_steps=$((total_steps / 2))

started=$SECONDS
failures=0
printf '%-24s %-20s %8s\n' step status seconds > "$out/summary.txt"

# step NAME SECONDS COMMAND...: run COMMAND under a timeout into $out/NAME.txt and add a summary line.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget * slowdown - (SECONDS - started))) begin=$SECONDS status rc
    limit=$((limit * slowdown))
    (( limit > left )) && limit=$left
    echo "\$ $*" > "$out/$name.txt"
    if (( limit < 5 )); then
        status="skipped (no time)"
    else
        timeout --kill-after=5 "$limit" "$@" >> "$out/$name.txt" 2>&1
        rc=$?
        case $rc in
            0) status=ok ;;
            124 | 137) status="timed out (${limit}s)" ;;
            *) status="failed (exit $rc)" ;;
        esac
    fi
    [[ $status == ok ]] || failures=$((failures + 1))
    printf '%-24s %-20s %8d\n' "$name" "$status" $((SECONDS - begin)) >> "$out/summary.txt"
    echo "$name: $status"
}

train=("$python" train.py configs/demo.py "${train_args[@]}" rec="$work/demo_data")
newest_checkpoint() {  # the folder --resume auto would load; a name that does not exist when there is none
    ls -d "$1"/checkpoints/step_* 2> /dev/null | tail -n 1 | grep . || echo "$1/checkpoints/(none)"
}
gpu_job="${device}${eval_precision/--/_}"

rm -rf "$work/demo_data" "$work/resumed" "$work/uninterrupted" "$work/repeat" "$work/ijbc"

step environment 10 "$python" -c 'import platform, torch
print(platform.platform(), "python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")'
# The selection must not match tests/test_check_script.py, which runs this script.
step pytest_cuda 40 "$python" -m pytest -q -ra -p no:cacheprovider -k "cuda or gpu or device"
step "backbone_$net_small" 30 "$python" -m bench.bench_backbone --network "$net_small" --device "$device" \
    "${backbone_args[@]}"
step "backbone_$net_large" 40 "$python" -m bench.bench_backbone --network "$net_large" --device "$device" \
    "${backbone_args[@]}"
step train_step_eager 35 "$python" -m bench.bench_train_step --device "$device" --precision "$step_precision" "${step_args[@]}"
step plan_memory 30 "$python" -m bench.bench_plan --device "$device" "${plan_args[@]}"
step dpap 30 "$python" -m bench.bench_dpap "${dpap_args[@]}"
step partial_fc 35 "$python" -m bench.bench_partial_fc --precision bf16 "${pfc_args[@]}"
step demo_data 35 "$python" -m tools.make_demo_data --out "$work/demo_data" "${demo_args[@]}"
step train_first_half 20 "${train[@]}" output="$work/resumed" --max-steps "$half_steps"
step train_resumed 20 "${train[@]}" output="$work/resumed" --max-steps "$total_steps" --resume auto
step train_uninterrupted 20 "${train[@]}" output="$work/uninterrupted" --max-steps "$total_steps"
step train_repeat 20 "${train[@]}" output="$work/repeat" --max-steps "$total_steps"
step compare_resume 10 "$python" -m bench.gpu_check_compare weights "$(newest_checkpoint "$work/resumed")" \
    "$(newest_checkpoint "$work/uninterrupted")"
# Two uninterrupted runs: how far non-deterministic kernels alone move the weights, the yardstick of the above.
step compare_repeat 10 "$python" -m bench.gpu_check_compare weights "$(newest_checkpoint "$work/repeat")" \
    "$(newest_checkpoint "$work/uninterrupted")"
evaluate=("$python" eval_ijbc.py --model-prefix "$(newest_checkpoint "$work/uninterrupted")/common.pt"
          --network vit_nano --image-path "$work/demo_data/IJBC" --result-dir "$work/ijbc" --target IJBC)
step eval_cpu_fp32 25 "${evaluate[@]}" --job cpu_fp32 --device cpu --num-workers "$cpu_workers"
step "eval_$gpu_job" 20 "${evaluate[@]}" --job "$gpu_job" "$eval_precision" "${eval_args[@]}"
step compare_tables 10 "$python" -m bench.gpu_check_compare tables "$work/ijbc/cpu_fp32" "$work/ijbc/$gpu_job"
# Last, so that a slow compilation cannot take time from the other steps.
step train_step_compile 150 "$python" -m bench.bench_train_step --device "$device" --precision "$step_precision" \
    "${step_args[@]}" "${compile_args[@]}" --compile

echo "total $((SECONDS - started)) s, $failures step(s) not ok" >> "$out/summary.txt"
cat "$out/summary.txt"
(( failures == 0 ))
