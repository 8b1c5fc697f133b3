#!/usr/bin/env bash
# Sets up a fresh machine: the Fashion-MNIST package, the host and Cortex-M4 C toolchains and
# emulator, a virtual environment in .venv, cnnzip and its test tools; with --peer, also the
# peer C generator. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
# C compilers: `export --format c` and `bench --c` compile the generated C for the host (gcc)
# and for a Cortex-M4 (arm-none-eabi-gcc with newlib), run on qemu's emulated MPS2-AN386;
# `export --format hls4ml --check` compiles hls4ml's C++ simulation with g++
if ! command -v gcc >/dev/null || ! command -v g++ >/dev/null \
    || ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    gcc g++ libc6-dev binutils gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, so nothing later can pull another (CUDA) build
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# --peer: emx-onnx-cgen (an ONNX-to-C generator) in its own environment, for `bench --c --peer`
if [ "${1:-}" = "--peer" ] && [ ! -x .venv-peer/bin/emx-onnx-cgen ]; then
  "$PY" -m venv .venv-peer
  .venv-peer/bin/python -m pip install -q "emx-onnx-cgen==1.4.0"
fi
.venv/bin/cnnzip env
