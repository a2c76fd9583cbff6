#!/usr/bin/env bash
# A Vulkan driver for `make test-wgpu`: the machine's own, or Mesa's lavapipe
# (a CPU implementation of Vulkan, Debian's mesa-vulkan-drivers) when none is
# installed, so burn-wgpu runs without a GPU. Prints the device wgpu will get.
set -euo pipefail
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "wgpu-setup: no Vulkan driver; installing Mesa's lavapipe (mesa-vulkan-drivers)" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 vulkan-tools >/dev/null
fi
if command -v vulkaninfo >/dev/null; then
  vulkaninfo --summary 2>/dev/null | grep -m1 deviceName | sed 's/^[[:space:]]*/wgpu-setup: Vulkan device: /' >&2 || true
fi
