#!/usr/bin/env bash
# The checks a session runs when a GPU is lent (one call, ~8 minutes on an H200):
#   1. environment (GPU, torch, versions);
#   2. benchmarks/lora.py at its default size (LoRA vs full fine-tuning peak memory/time);
#   3. benchmarks/gpu.py: plan vs measured peak memory, tokens/s and MFU for Meta's 7B MTP
#      shape cut to 8 blocks, every stage;
#   4. every stage end to end through the `wmtp` entrypoint on the device (micro assets
#      built on the CPU meanwhile; bf16 autocast, fused AdamW, checkpoints, critic ->
#      verifiable, LoRA), then `evaluate` where bubblewrap exists;
#   5. benchmarks/mtp_step.py (our MTP step vs naive MTP vs transformers' Llama) at the
#      7B-8 shape; benchmarks/gpu.py for LoRA on the 7B-8 shape and for a 1.1B shape.
# PARTS=world (a call of its own, ~10 minutes on an H200): benchmarks/gpu.py --world 4, rank
#   0 of a 4-GPU run on this one GPU (torch's fake process group: FSDP2's real shards and
#   communication buffers, no-op collectives) for profile vessl and vessl_a100_40gb at full
#   shape, every stage, planned vs allocated vs reserved, s/step, tokens/s, MFU; then the
#   same with training.compile=true (plan skipped: it does not model compile).
# Logs and JSON go to $OUT (default ./gpu_out). DEVICE=cpu SMALL=1 runs a smoke version.
# PARTS picks sections (default "bench cli more"; "world" as above). `setup` verifies the synthetic labels in
# bubblewrap: on a machine without it, build the micro assets elsewhere (`python -m
# weighted_mtp setup --storage DIR --pretrain-problems 200 --pretrain-steps 40`) and pass
# ASSETS=DIR (copied, never written).
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${EXTRA_SITE:+:$EXTRA_SITE}"
STORAGE=$(mktemp -d)
trap 'rm -rf "$STORAGE"' EXIT
small() { [ "${SMALL:-0}" = 1 ]; }
part() { [[ " ${PARTS:-bench cli more} " == *" $1 "* ]]; }

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/all.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T))" | tee -a "$OUT/all.log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/all.log" | tail -n 40
    echo "=== $name: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$OUT/all.log"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  $PY -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__,
  peft.__version__, torch.cuda.is_available())'"

# -- rank 0 of 4 GPUs at the profiles' full shape (fake process group) --------------------
if part world; then
    STAGES=baseline,critic,verifiable,rho1
    if small; then
        step world_small 300 $PY benchmarks/gpu.py --small --device "$DEVICE" --world 4 \
            --steps 1 --stages "$STAGES" --json "$OUT/world_small.json"
    else
        for profile in vessl vessl_a100_40gb; do
            step "world4_$profile" 200 $PY benchmarks/gpu.py --profile "$profile" --world 4 \
                --steps 2 --stages "$STAGES" --device "$DEVICE" --json "$OUT/world4_$profile.json"
        done
        for profile in vessl vessl_a100_40gb; do
            step "world4_${profile}_compile" 150 $PY benchmarks/gpu.py --profile "$profile" \
                --world 4 --steps 2 --no-plan --stages "$STAGES" --device "$DEVICE" \
                --overrides training.compile=true --json "$OUT/world4_${profile}_compile.json"
        done
    fi
    if ! part bench && ! part cli && ! part more; then exit 0; fi  # no assets needed
fi

# the micro assets (CPU) build in the background while the GPU benchmarks run
if [ -n "${ASSETS:-}" ]; then
    cp -r "$ASSETS"/. "$STORAGE"/
    true &
else
    $PY -m weighted_mtp setup --storage "$STORAGE" --pretrain-problems 200 \
        --pretrain-steps 40 --jobs 4 >"$OUT/setup.log" 2>&1 &
fi
SETUP_PID=$!

# -- benchmarks ---------------------------------------------------------------------------
if ! part bench; then
    :
elif small; then
    step lora_bench 300 $PY benchmarks/lora.py --small --device "$DEVICE" --steps 1
    step gpu_small 300 $PY benchmarks/gpu.py --small --device "$DEVICE" --steps 1 \
        --json "$OUT/gpu_small.json"
else
    step lora_bench 150 $PY benchmarks/lora.py --device "$DEVICE" --steps 5
    step gpu_7b8 240 $PY benchmarks/gpu.py --preset 7b-8 --device "$DEVICE" \
        --json "$OUT/gpu_7b8.json"
fi

# -- every stage through the entrypoint, on the micro assets ------------------------------
wait "$SETUP_PID"
echo "=== setup: exit $? ($(date +%T))" | tee -a "$OUT/all.log"
if part cli; then
    STEPS=$(small && echo 8 || echo 64)
    AMP=$([ "$DEVICE" = cpu ] && echo false || echo true)  # bf16 autocast on a CPU is slow
    DATA=$STORAGE/datasets/synthetic/processed
    RUN=(profile=local "runtime.device=$DEVICE" "runtime.mixed_precision=$AMP"
         "models.policy.path=$STORAGE/models/micro-mtp"
         "models.policy.tokenizer_path=$STORAGE/models/micro-mtp/tokenizer"
         "models.reference.path=$STORAGE/models/micro-ref"
         "models.reference.cache_dir=$STORAGE/ref_cache"
         "dataset.train=$DATA/train.jsonl" "dataset.validation=$DATA/valid.jsonl"
         "data_sampling.n_samples=$STEPS" training.batch_size=4 training.n_epochs=1
         "training.eval_samples=$STEPS" "hydra.run.dir=$STORAGE/outputs/\${experiment.stage}")
    for stage in baseline critic rho1; do
        step "train_$stage" 120 $PY -m weighted_mtp.cli "stage=$stage" "${RUN[@]}" \
            "checkpoint.save_dir=$STORAGE/ckpt/$stage"
    done
    step train_verifiable 120 $PY -m weighted_mtp.cli stage=verifiable "${RUN[@]}" \
        "checkpoint.save_dir=$STORAGE/ckpt/verifiable" \
        "experiment.critic_checkpoint=$STORAGE/ckpt/critic/checkpoint_final"
    step train_lora 120 $PY -m weighted_mtp.cli stage=baseline "${RUN[@]}" \
        models.policy.lora.enabled=true models.policy.dtype=bfloat16 \
        "checkpoint.save_dir=$STORAGE/ckpt/lora"
    # generation on the device (KV cache); programs run only where bubblewrap can isolate them
    if command -v bwrap >/dev/null; then
        step evaluate 120 $PY -m weighted_mtp evaluate --device "$DEVICE" --limit 16 \
            --checkpoint "$STORAGE/ckpt/baseline/checkpoint_final" --data "$DATA/test.jsonl" \
            --out "$STORAGE/eval"
    else
        echo "=== evaluate: skipped (no bubblewrap on this machine)" | tee -a "$OUT/all.log"
    fi
fi

# -- more shapes --------------------------------------------------------------------------
if small || ! part more; then exit 0; fi
step mtp_step_7b8 150 $PY benchmarks/mtp_step.py --device "$DEVICE" --amp bfloat16 \
    --dim 4096 --blocks 8 --heads 32 --kv-heads 32 --seq 2048 --batch 4
step gpu_7b8_lora 90 $PY benchmarks/gpu.py --preset 7b-8 --lora --stages baseline,rho1 \
    --device "$DEVICE" --json "$OUT/gpu_7b8_lora.json"
step gpu_1b 120 $PY benchmarks/gpu.py --preset 1b --stages baseline,verifiable \
    --device "$DEVICE" --json "$OUT/gpu_1b.json"
