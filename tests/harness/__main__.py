"""python -m tests.harness {build,up,down,status}: the local control plane from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import binaries, kuberay, prometheus_operator
from .cluster import ClusterError, LocalCluster, is_running

DEFAULT_DIR = Path(os.environ.get("MLCYCLE_CLUSTER_DIR", "/tmp/mlcycle-cluster"))


def _up(directory: Path, nodes: int, gpu_nodes: int) -> int:
    existing = LocalCluster.from_state(directory)
    if existing is not None and any(is_running(p) for p in existing.processes):
        print(f"[harness] a cluster is already running from {directory}; `make cluster-down` first", file=sys.stderr)
        return 1
    paths = binaries.ensure_all()
    cluster = LocalCluster(directory=directory, binaries=paths, nodes=nodes, gpu_nodes=gpu_nodes)
    try:
        cluster.start()
    except ClusterError as err:
        print(f"[harness] {err}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={cluster.kubeconfig_path}")
    print(f"# kubectl: {paths['kubectl']}   helm: {paths['helm']}")
    return 0


def _down(directory: Path) -> int:
    cluster = LocalCluster.from_state(directory)
    if cluster is None:
        print(f"[harness] no cluster recorded in {directory}")
        return 0
    cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find in the cache) the control-plane binaries, KubeRay's RayJob CRD "
                                 "and the Prometheus Operator's ServiceMonitor and PrometheusRule CRDs")
    up = sub.add_parser("up", help="start the control plane in the background")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    up.add_argument("--nodes", type=int, default=2, help="KWOK CPU nodes")
    up.add_argument("--gpu-nodes", type=int, default=1, help="KWOK nodes with nvidia.com/gpu capacity")
    down = sub.add_parser("down", help="stop every process `up` started")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    sub.add_parser("images", help="build every image the cluster tier runs: kind's node image (its binaries from "
                                  "Go modules) and the operator and runtime images from their Dockerfiles, on "
                                  "bases made here from Debian's packages (nothing pulled)")
    for verb, what in (("kind-up", "create a kind cluster from kind-config.yaml with a node image built here"),
                       ("kind-down", "delete that kind cluster")):
        cmd = sub.add_parser(verb, help=what)
        cmd.add_argument("--name", default="mlcycle")
    args = parser.parse_args(argv)
    # These need the project's venv (PyYAML); build/up/down run on any python3.
    if args.command in ("images", "kind-up", "kind-down"):
        from . import kind

        return kind.main([args.command.removeprefix("kind-"), getattr(args, "name", "")])
    if args.command == "build":
        return binaries.main() or kuberay.main() or prometheus_operator.main()
    if args.command == "up":
        return _up(args.dir, args.nodes, args.gpu_nodes)
    return _down(args.dir)


if __name__ == "__main__":
    sys.exit(main())
