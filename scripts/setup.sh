#!/usr/bin/env bash
# Installs every Debian 12 package admis needs to build, test and run. Idempotent: when
# everything is present it changes nothing and does not touch the network.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache git pkg-config
  libtorch-dev libopenblas0-openmp
  libjemalloc-dev               # the admis executable's allocator (see host/main.cpp)
  libopencv-dev
  libboost-dev libboost-program-options-dev libboost-filesystem-dev
  libfmt-dev libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libgloo-dev
  libprotobuf-dev protobuf-compiler
  python3-torch python3-numpy   # cross-checks: checkpoints admis writes must load in PyTorch
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
