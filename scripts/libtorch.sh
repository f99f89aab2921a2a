#!/usr/bin/env bash
# Installs LibTorch 2.9.0 — the version burn-tch 0.21 (tch 0.22) links — from PyTorch's wheel on
# PyPI, once, under ~/.cache/ddexp/ (outside any checkout), and prints the environment that
# `cargo build --features tch` needs. Progress goes to stderr, the environment to stdout:
#
#   eval "$(scripts/libtorch.sh)"          # CPU and CUDA: the full wheel (about 6.7 GB with
#                                          # its NVIDIA libraries, 2 minutes)
#   eval "$(scripts/libtorch.sh --cpu)"    # CPU only: about 0.5 GB, 30 seconds
#   cargo build --release --features tch
#
# The binary remembers where LibTorch is (build.rs writes the folder into its run path), so it
# runs without LD_LIBRARY_PATH as long as that folder stays.
#
# Why --cpu needs care: PyPI's Linux torch wheel is the CUDA build. Its libtorch.so links
# libtorch_cuda.so (the whole CUDA stack), and even libtorch_cpu.so needs libcudart and
# libcupti. So the CPU-only install takes the wheel without its dependencies plus those two small
# NVIDIA runtime wheels, and assembles a LibTorch folder without the CUDA libraries; tch then
# links only libtorch_cpu.so and libc10.so.
set -euo pipefail

VERSION=2.9.0
CUDA_RUNTIME=12.8.90 # the CUDA 12.8 runtime that torch 2.9.0's wheel was built against
CACHE=${DDEXP_CACHE:-$HOME/.cache/ddexp}
PYTHON=${PYTHON:-python3}

variant=full
case "${1:-}" in
"") ;;
--cpu) variant=cpu ;;
-h | --help)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: $0 [--cpu]" >&2
    exit 2
    ;;
esac

say() { echo "libtorch.sh: $*" >&2; }

# The site-packages folder of a venv (its Python version is whatever python3 is).
site_packages() {
    "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

mkdir -p "$CACHE"
if [ "$variant" = full ]; then
    venv=$CACHE/torch-$VERSION-venv
    if [ ! -f "$venv/.complete" ]; then
        say "installing torch==$VERSION with its CUDA libraries into $venv (about 6.7 GB)"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==$VERSION" >&2
        touch "$venv/.complete"
    fi
    libtorch=$(site_packages "$venv")/torch
else
    libtorch=$CACHE/libtorch-$VERSION-cpu
    if [ ! -f "$libtorch/.complete" ]; then
        say "installing a CPU-only LibTorch $VERSION into $libtorch (about 0.5 GB)"
        work=$(mktemp -d "$CACHE/.libtorch-cpu.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        "$PYTHON" -m venv "$work/venv"
        "$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
            "torch==$VERSION" \
            "nvidia-cuda-runtime-cu12==$CUDA_RUNTIME" \
            "nvidia-cuda-cupti-cu12==$CUDA_RUNTIME" >&2
        wheel=$(site_packages "$work/venv")
        mkdir -p "$work/libtorch/lib"
        # Hard links: the venv is removed below, the files stay.
        cp -al "$wheel/torch/include" "$work/libtorch/include"
        for f in "$wheel"/torch/lib/libc10.so "$wheel"/torch/lib/libtorch_cpu.so \
            "$wheel"/torch/lib/libtorch.so "$wheel"/torch/lib/libgomp*; do
            ln "$f" "$work/libtorch/lib/"
        done
        # libtorch_cpu.so finds these next to itself (its run path includes $ORIGIN).
        ln "$wheel"/nvidia/cuda_runtime/lib/libcudart.so.12 "$work/libtorch/lib/"
        ln "$wheel"/nvidia/cuda_cupti/lib/libcupti.so.12 "$work/libtorch/lib/"
        touch "$work/libtorch/.complete"
        rm -rf "$libtorch"
        mv "$work/libtorch" "$libtorch"
    fi
fi
say "LibTorch $VERSION ($variant) is in $libtorch"
echo "export LIBTORCH=$libtorch"
