#!/usr/bin/env bash
# Installs the Debian packages hv builds against, only when some are missing.
# Runs `apt-get update` once before installing. Needs root (or sudo).
set -euo pipefail
PACKAGES=(libopenblas-dev libzmq3-dev libhdf5-dev hdf5-tools libavformat-dev libavcodec-dev libswscale-dev libavutil-dev pkg-config iproute2 procps ffmpeg)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "hv: system packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "hv: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
