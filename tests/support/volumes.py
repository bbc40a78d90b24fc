"""A host folder behind a static PersistentVolume, for the tests on the real node: the test
cluster has no dynamic provisioner, and the node is this machine, so a test reads and writes the
files the pods see."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.cluster.harness import Cluster


class Volume:
    """A host folder behind a static PersistentVolume of storage class `name`."""

    def __init__(self, cluster: Cluster, name: str, size_mb: int | None = None) -> None:
        self.cluster, self.name = cluster, name
        self.path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/var/tmp"))
        self.tmpfs = size_mb is not None
        if self.tmpfs:  # a volume that really fills up
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0777", "tmpfs", self.path],
                check=True,
            )
        self.path.chmod(0o777)  # hostPath: no fsGroup ownership change
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": f"{size_mb or 1024}Mi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": name,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(self.path), "type": "Directory"},
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))

    def files(self) -> list[Path]:
        """Every file in the volume."""
        return [p for p in self.path.rglob("*") if p.is_file()]

    def remove(self) -> None:
        self.cluster.kubectl("delete", "pv", self.name, "--wait=false")
        if self.tmpfs:
            subprocess.run(["umount", "-l", self.path], check=False)
        shutil.rmtree(self.path, ignore_errors=True)
