#!/usr/bin/env bash
# Everything worth learning from a lent GPU, in one command: is the backend correct (doctor,
# fixture parity, a 200-step run against flex), how fast and how big (text8 and OpenWebText
# networks), and does data parallelism run (when the machine has two GPUs). Each step has its
# own time limit and a failure does not stop the others; everything lands in one Markdown
# summary.
#
#   scripts/gpu-acceptance.sh [--backend cuda] [--ddexp PATH] [--fixtures DIR] [--smoke] [OUT]
#
#   --backend   cuda (default), libtorch-cuda, wgpu, or any backend the binary has
#   --ddexp     the binary to test (default: target/release/ddexp)
#   --fixtures  nanoDD fixture cases (default: tests/fixtures/nanodd)
#   --smoke     tiny sizes everywhere: a dry run of the script itself on a slow device
#   OUT         where summary.md and the logs go (default: $OUT, else gpu-acceptance/)
#
# Needs nothing but the binary and this checkout: no dataset (the benches draw random tokens,
# the runs use the built-in synthetic corpus), no compiler, no network. docs/performance.md
# shows the exact call for a lent GPU.
set -uo pipefail

backend=cuda
ddexp=target/release/ddexp
fixtures=tests/fixtures/nanodd
smoke=false
out=${OUT:-gpu-acceptance}
while [ $# -gt 0 ]; do
    case "$1" in
    --backend) backend=$2; shift 2 ;;
    --ddexp) ddexp=$2; shift 2 ;;
    --fixtures) fixtures=$2; shift 2 ;;
    --smoke) smoke=true; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1; shift ;;
    esac
done
cd "$(dirname "$0")/.."
ddexp=$(realpath "$ddexp")
[ -x "$ddexp" ] || { echo "no ddexp binary at $ddexp" >&2; exit 2; }
mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=$out/summary.md
failures=0

# The backend's name in experiment files (cuda -> Cuda, ...).
case "$backend" in
cpu) spec_name=Cpu ;;
cuda) spec_name=Cuda ;;
libtorch) spec_name=LibTorch ;;
libtorch-cuda) spec_name=LibTorchCuda ;;
wgpu) spec_name=Wgpu ;;
*) echo "unknown backend $backend" >&2; exit 2 ;;
esac

if $smoke; then
    # OpenWebText at 512 tokens: lavapipe binds no buffer above 128 MiB, and the logits of one
    # sequence of 1024 GPT-2 tokens take 196 MiB.
    text8_batch=2 text8_steps=1 big_batches="4" owt_batch=1 owt_steps=1 owt_len=512 run_iters=20
    text8_net="network=(n_embed:64,n_heads:2,n_blocks:1,n_cond:32,dropout:0.0)"
    owt_net="network=(n_embed:64,n_heads:2,n_blocks:1,n_cond:32,dropout:0.0)"
    limit=900
else
    text8_batch=64 text8_steps=10 big_batches="128 256 512" owt_batch=8 owt_steps=5 owt_len=1024 run_iters=200
    text8_net="network=(n_embed:768,n_heads:12,n_blocks:12,n_cond:128,dropout:0.025)"
    owt_net="network=(n_embed:768,n_heads:12,n_blocks:12,n_cond:128,dropout:0.0)"
    limit=150
fi

{
    echo "# GPU acceptance: $backend"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- machine: $(uname -n), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    if command -v nvidia-smi >/dev/null; then
        echo "- GPUs: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | paste -sd ';' -)"
    fi
    echo "- binary: $("$ddexp" --version) ($ddexp)"
    $smoke && echo "- **smoke sizes** (a dry run of the script, not measurements)"
    echo
} >"$summary"

# step NAME SECONDS CMD...: runs CMD with a time limit, logs its output, records the outcome.
step() {
    local name=$1 seconds=$2
    shift 2
    local log="$out/$name.log" started status
    started=$(date +%s%N)
    if declare -F "$1" >/dev/null; then
        # A function of this script: run it in a child bash that the time limit can stop.
        timeout --kill-after=10 "$seconds" bash -c '"$@"' _ "$@" >"$log" 2>&1
    else
        timeout --kill-after=10 "$seconds" "$@" >"$log" 2>&1
    fi
    status=$?
    local took_ms=$((($(date +%s%N) - started) / 1000000))
    local verdict=passed
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        verdict="TIMED OUT after ${seconds} s"
        failures=$((failures + 1))
    elif [ "$status" != 0 ]; then
        verdict="FAILED (exit $status)"
        failures=$((failures + 1))
    fi
    {
        printf '## %s: %s (%d.%01d s)\n\n' "$name" "$verdict" $((took_ms / 1000)) $((took_ms % 1000 / 100))
        echo '```'
        echo "\$ ${*//$ddexp/ddexp}"
        tail -n 30 "$log"
        echo '```'
        echo
    } >>"$summary"
    echo "$name: $verdict" >&2
    return "$status"
}

# bench NAME EXPERIMENT BATCH STEPS NETWORK [--set ...]
bench() {
    local name=$1 experiment=$2 batch=$3 steps=$4 net=$5
    shift 5
    step "$name" "$limit" "$ddexp" bench "$experiment" \
        --set "topology.backend=$spec_name" --set "topology.devices=[0]" \
        --set "train.batch_size=$batch" --set train.grad_accum=1 --set "$net" "$@" \
        --steps "$steps" --warmup 2
}

# 1. Does the device compute what flex computes?
step doctor "$limit" "$ddexp" doctor --backend "$backend" --probe 3
step parity "$limit" "$ddexp" parity "$fixtures" --backend "$backend"

# 2. Speed and memory of the reference networks (random tokens: no dataset needed).
bench bench_text8_b$text8_batch experiments/d3pm_text8.ron "$text8_batch" "$text8_steps" "$text8_net"
largest=none
for b in $big_batches; do
    if bench bench_text8_b$b experiments/d3pm_text8.ron "$b" 3 "$text8_net"; then
        largest=$b
    else
        break
    fi
done
echo "Largest text8 batch that trained (of $big_batches): **$largest**" >>"$summary"
echo >>"$summary"
bench bench_owt_b$owt_batch experiments/d3pm_openwebtext.ron "$owt_batch" "$owt_steps" "$owt_net" \
    --set "dataset.seq_len=$owt_len"

# 3. A short run on the device against the same run on flex: the loss curves must agree.
short_run() {
    local name=$1 on=$2 devices=$3
    (mkdir -p "$work/$name" && cd "$work/$name" &&
        "$ddexp" run "$repo/experiments/quickstart.ron" \
            --set "topology.backend=$on" --set "topology.devices=$devices" \
            --set "train.max_iters=$run_iters" --set train.warmup_iters=10 \
            --set train.eval_interval=100 --set train.eval_iters=4 \
            --set eval.kl_batches=4 --set eval.recon_batches=2)
}
export -f short_run
repo=$PWD
export ddexp work run_iters repo
step run_device "$limit" short_run device "$spec_name" "[0]"
step run_flex "$limit" short_run flex Cpu "[0]"
compare_runs() {
    local a b
    a=$(ls "$work"/device/results/quickstart/*/train.csv) || return 1
    b=$(ls "$work"/flex/results/quickstart/*/train.csv) || return 1
    # Column 4 is the loss; the same seed gives the same batches, times and masks on both.
    paste -d, "$a" "$b" | awk -F, 'NR > 1 {
            n = NF / 2; d = $4 - $(n + 4); if (d < 0) d = -d
            r = d / ($(n + 4) > 0 ? $(n + 4) : 1); if (rows == 0 || r > worst) { worst = r; at = $1 }
            rows++
        }
        END {
            printf "%d logged losses compared; worst relative difference %.3e at iteration %s\n", rows, worst, at
            exit !(rows > 0 && worst < 1e-2)
        }'
}
export -f compare_runs
step run_compare 30 compare_runs

# 4. Data parallelism, where the machine has two GPUs.
gpus=0
command -v nvidia-smi >/dev/null && gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -ge 2 ]; then
    step run_two_devices "$limit" short_run two "$spec_name" "[0, 1]"
else
    printf '## run_two_devices: skipped (%s GPU)\n\n' "$gpus" >>"$summary"
fi

printf '**%s step(s) failed.**\n' "$failures" >>"$summary"
echo "summary: $summary" >&2
[ "$failures" = 0 ]
