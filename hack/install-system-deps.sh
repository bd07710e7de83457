#!/usr/bin/env bash
# Install the Debian packages the test suite needs, only those missing, so a warm machine pays nothing.
# Go (>= 1.26, for the control-plane build) is a prerequisite, not installed here: Debian's is too old.
set -euo pipefail
# command -> package
declare -A want=(
  [openssl]=openssl          # certificates for the local control plane
  [prometheus]=prometheus    # canary analysis and drift metrics in the integration tests
  [redis-server]=redis-server  # Feast's Redis online store in the feature-store integration tests
  [dockerd]=docker.io        # the cluster tier: kind nodes and the project's images, all built here
  [debootstrap]=debootstrap  # the Debian bases those images are built on (no registry to pull one from)
  [ip]=iproute2              # the process node's pod network namespaces, veths and bridge
  [nsenter]=util-linux       # running a pod's processes inside its namespace
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "[system-deps] installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Docker daemon. These machines have no init system to start it, so start it here when none answers. It
# is a system service, not part of a test run: it is started without the CI run's marker (.ci/run counts the
# run's own processes as leftovers, and checks for leftover kind nodes itself).
if ! docker info >/dev/null 2>&1; then
  echo "[system-deps] starting dockerd (log: /var/log/mlcycle-dockerd.log)"
  $sudo env -u MLCYCLE_CI_RUN setsid nohup dockerd >/var/log/mlcycle-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "[system-deps] dockerd did not start:"; tail -20 /var/log/mlcycle-dockerd.log; exit 1; }
fi
