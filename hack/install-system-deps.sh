#!/usr/bin/env bash
# Install the Debian packages the test suite needs, only those missing, so a warm machine pays nothing.
# Go (>= 1.26, for the control-plane build) is a prerequisite, not installed here: Debian's is too old.
set -euo pipefail
# command -> package
declare -A want=(
  [openssl]=openssl          # certificates for the local control plane
  [prometheus]=prometheus    # canary analysis and drift metrics in the integration tests
  [redis-server]=redis-server  # Feast's Redis online store in the feature-store integration tests
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "[system-deps] installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
