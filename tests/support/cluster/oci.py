"""One-binary OCI archives (pause, probe) for `ctr images import`: no registry, no podman."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _layer(binary: Path, name: str) -> bytes:
    """A reproducible tar: /<name> (the binary) and a world-writable /tmp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
        data = binary.read_bytes()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def write_archive(binary: Path, image: str, entrypoint: list[str], user: str, out: Path) -> str:
    """Write an OCI archive of image (one layer: the binary at /) to out; its manifest digest."""
    name = entrypoint[0].lstrip("/")
    layer = _layer(binary, name)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": user, "Env": ["PATH=/"]},
            "rootfs": {"type": "layers", "diff_ids": [_descriptor(LAYER, layer)["digest"]]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _descriptor(CONFIG, config),
            "layers": [_descriptor(LAYER, layer)],
        },
        sort_keys=True,
    ).encode()
    ref = _descriptor(MANIFEST, manifest)
    ref["annotations"] = {
        "io.containerd.image.name": image,
        "org.opencontainers.image.ref.name": image.rpartition(":")[2],
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [ref]}).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": index,
        **{
            "blobs/sha256/" + hashlib.sha256(blob).hexdigest(): blob
            for blob in (layer, config, manifest)
        },
    }
    with tarfile.open(out, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(ref["digest"])
