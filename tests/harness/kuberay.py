"""KubeRay's ray-operator, from its pinned Go module: the RayJob CRD alone for the integration tier, and the
operator itself (built here, as an image) with its CRDs and RBAC for the cluster tier.

The integration tests install the RayJob CRD so that the operator's RayJob path meets the schema the real
KubeRay serves (fetched by gomodule.module_files). The cluster tier runs KubeRay for real: ``operator_image``
builds ``quay.io/kuberay/operator:<version>`` (the name KubeRay's own manifests use) from the module's main
package, and ``install_manifest`` renders the module's ``config/default`` kustomization (CRDs, RBAC, the
Deployment) with that image, into ``NAMESPACE``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .binaries import KUBERAY_VERSION, BuildError
from .gomodule import module_files

MODULE = "github.com/ray-project/kuberay/ray-operator"
VERSION = KUBERAY_VERSION
# `go mod download -json` reports this as "Sum"; a different module zip is refused (tests/harness/go/kuberay's
# go.sum pins the same hash for the build).
MODULE_SUM = "h1:KCjCQ7PSsvs9Ke+90CZbbs498nuaIJ/JkXk4vd54EVg="
RAYJOB_CRD = "config/crd/bases/ray.io_rayjobs.yaml"
IMAGE = f"quay.io/kuberay/operator:{VERSION}"
NAMESPACE = "kuberay-system"
# As KubeRay's Dockerfile builds it (distroless, uid 65532), on the Debian base built here.
DOCKERFILE = """\
FROM {debian}
COPY ray-operator /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
"""


def crd_path(log=print) -> Path:
    """The RayJob CRD of KubeRay `VERSION`, fetched once through the Go module proxy; BuildError if it cannot be."""
    [path] = module_files(MODULE, VERSION, MODULE_SUM, [RAYJOB_CRD], f"kuberay/ray-operator-{VERSION}",
                          "KubeRay's CRDs", log=log)
    return path


def operator_image(log=print) -> str:
    """KubeRay's operator image, built here from the module under the name its manifests pull."""
    from . import kind

    return kind._image_of("kuberay", IMAGE, DOCKERFILE, log)


def install_manifest(kubectl: Path, image: str, namespace: str = NAMESPACE) -> str:
    """KubeRay as its module's config/default installs it (CRDs, ClusterRole and bindings, the Deployment), in
    `namespace` and with `image`. Apply it server-side: the CRDs are too large for client-side apply's annotation."""
    from . import kind

    base = kind._module_dir("kuberay", MODULE) / "config" / "default"
    proc = subprocess.run([str(kubectl), "kustomize", str(base)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"kubectl kustomize {base}: {proc.stderr}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for doc in docs:
        meta = doc["metadata"]
        if meta.get("namespace"):
            meta["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = image
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    return yaml.safe_dump_all([ns, *docs], sort_keys=False)


def main() -> int:
    try:
        print(f"  {'rayjobs CRD':24} {crd_path()}")
    except BuildError as err:
        print(f"[harness] {err}", file=sys.stderr)
        return 1
    return 0
