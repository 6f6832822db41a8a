#!/usr/bin/env bash
# Every GPU measurement of this repo in one prepared run: a lent H100/H200 is held for
# minutes, so the steps run back to back under one deadline and write what they have.
#
#   OUT=results bash benchmarks/gpu_session.sh          # from the repository root
#   TINY=1 OUT=/tmp/x bash benchmarks/gpu_session.sh    # the plumbing, on a CPU, in minutes
#
# 1. throughput.py with convae's defaults (issue 5's table: 3 archs, batch 128 and 1024);
# 2. a profile of the keras model's compiled step at batch 128 (short of 2x there);
# 3. streamed against resident training at 128x128 RGB (issue 35: streamed at least 90 % of resident),
#    scoring speed at 128x128 and for a 1024x1024 image by sliding windows (issue 36),
#    inspection on real photographs with DRAEM trained longer than a CPU can (issue 42: 300 epochs),
#    and the test suite with CUDA as the default device.
# Output: $OUT/summary.txt (also printed) and $OUT/results.tgz (logs, metrics, final.json).
# On an H200 (2026-11-27): step 1 took 53 s eager with 2 repeats (each compiled measurement now
# adds about 15 s, hence 1 repeat). Step 3 and the scoring speed are untried on a GPU (written 2026-12-02; no GPU lent since).
set -u
OUT=${OUT:-runs/gpu-session}
BUDGET=${BUDGET:-530} # seconds for the whole script
START=$SECONDS
WORK=runs/gpu-work
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if [ -d .data/fashion-mnist ]; then export CONVAE_DATA=$PWD/.data; fi
left() { echo $((BUDGET - (SECONDS - START))); }
cap() { # the smaller of a step's own cap and what the deadline leaves (minus packing time), >= 1 s
    local rest=$(($(left) - 15))
    rest=$((rest < 1 ? 1 : rest))
    echo $(($1 < rest ? $1 : rest))
}

if [ -n "${TINY:-}" ]; then
    TP=(--samples 2048 --epochs 2 --repeats 1 --archs keras) ST=(--samples 1000 --steps 30 --size 32)
    SC=(--batch 4 --batches 1 --large 256) RI=(--categories brick --set epochs=1 max_steps=3)
else
    TP=(--samples 30720 --epochs 2 --repeats 1) ST=(--samples 20000 --steps 300 --size 128)
    SC=(--batch 256 --batches 10 --large 1024) RI=(--categories brick,tissue,gravel,grass --set epochs=300)
fi
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
RESIDENT=$([ "$DEVICE" = cuda ] && echo device || echo host)

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
    python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    nproc
} >"$WORK/env.txt" 2>&1
cat "$WORK/env.txt"

echo "== 1. throughput, convae defaults ($(left) s left)"
timeout "$(cap 200)" python3 benchmarks/throughput.py "${TP[@]}" 2>&1 | tee "$WORK/throughput.txt"
echo "== 2. where a batch-128 step of the keras model goes ($(left) s left)"
timeout "$(cap 60)" python3 benchmarks/profile_step.py --arch keras --batch 128 --rows 15 \
    --trace "$WORK/keras-128.trace.json" >"$WORK/profile-keras.txt" 2>&1
head -4 "$WORK/profile-keras.txt"
echo "== 3. streamed against resident, 128x128 RGB ($(left) s left)"
timeout "$(cap 150)" python3 benchmarks/streaming.py --throughput "${ST[@]}" --device "$DEVICE" \
    --resident "$RESIDENT" 2>&1 | tee "$WORK/streaming.txt"
echo "== 3b. scoring speed, the inspection preset ($(left) s left)"
timeout "$(cap 60)" python3 benchmarks/scoring_speed.py "${SC[@]}" --device "$DEVICE" 2>&1 | tee "$WORK/scoring.txt"
echo "== 3c. inspection on real photographs, DRAEM trained longer ($(left) s left)"
timeout "$(cap 240)" python3 benchmarks/real_inspection.py --methods inspection "${RI[@]}" device="$DEVICE" \
    2>&1 | tee "$WORK/real_inspection.txt"
echo "== 4. the tests, CUDA the default device ($(left) s left)"
OMP_NUM_THREADS=4 timeout "$(cap 300)" python3 -m pytest -q -p no:cacheprovider >"$WORK/pytest.txt" 2>&1

{
    cat "$WORK/env.txt"
    for f in "$WORK"/throughput*.txt; do
        echo "== $f"
        grep -v '^\[{' "$f"
    done
    echo "== profile (full tables and a Chrome trace in results.tgz)"
    head -25 "$WORK/profile-keras.txt" | cut -c1-160
    echo "== streamed against resident"
    tail -2 "$WORK/streaming.txt"
    echo "== scoring speed"
    tail -1 "$WORK/scoring.txt"
    echo "== inspection on real photographs (one JSON line a category done)"
    grep '^{' "$WORK/real_inspection.txt"
    echo "== tests on the GPU"
    tail -15 "$WORK/pytest.txt"
    echo "== $((SECONDS - START)) s in all"
} >"$OUT/summary.txt" 2>&1
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='events.out.*' "$WORK"
cat "$OUT/summary.txt"
