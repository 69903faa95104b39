#!/usr/bin/env bash
# Builds the example third-party plugin against the installed SDK only, then lists it,
# runs the conformance suite on it and uses it from a manifest.
set -euo pipefail
build_dir=$1
source_dir=$2
work=$(mktemp -d /tmp/admis-third-party-XXXXXX)
trap 'rm -rf "$work"' EXIT

cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
cmake -S "$source_dir/tests/third_party_plugin" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log"
lib="$work/build/libcombined_margin_head.so"
test -f "$lib"

admis="$work/prefix/bin/admis"
export ADMIS_PLUGIN_PATH="$work/build"
"$admis" plugins | tee "$work/plugins.txt" | grep -A1 "combined-margin"
grep -q "combined-margin 1.0.0" "$work/plugins.txt"
"$admis" check "$lib"
cp "$source_dir/tests/third_party_plugin/manifest.yaml" "$work/manifest.yaml"
"$admis" run "$work/manifest.yaml" --set stages.logits.inputs="$source_dir/configs/examples/head_inputs.safetensors"
test -f "$work/runs/third-party/logits/outputs.safetensors"
test -f "$work/runs/third-party/manifest.resolved.yaml"
grep -q "combined-margin" "$work/runs/third-party/manifest.resolved.yaml"
echo "third-party plugin: built against the installed SDK, listed, checked and run"
