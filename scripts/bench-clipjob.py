"""A ClipJob on the real node: 1 pod against 2 on the same folder, and the time a killed pod costs.

Usage (as root): flock /tmp/clipserve-node.lock .venv/bin/python scripts/bench-clipjob.py
           [--images 240] [--size 320x240] [--shard-size 16] [--model ViT-B-32:random]
           [--dtype fp32] [--cpu-request 500m] [--cpu-limit ""] [--out FILE] [--keep]
       .venv/bin/python scripts/bench-clipjob.py --dry-run   (the manifests; no cluster)

Brings up the local cluster and the real node as `make cluster` does (or reuses the one recorded
in the state dir), installs the operator from its image with its chart, writes photo-like JPEGs
into a host-folder claim (tests/support/volumes.py) and runs three ClipJobs over it, one after
the other, each into its own path of an output claim: 1 pod; 2 pods; 2 pods of which index 0 is
deleted with no grace period right after it published its first shard (as a lost node; the Job
starts a new pod that resumes after the published shards). Printed: apply -> Succeeded wall time,
items/s end to end and after the model load (the pods' own `done` lines), per pod the start
overhead (scheduled -> first published shard) and the model load (container start -> the
`start` line, from `kubectl logs --timestamps`), the node's CPUs and the pods' CPU
requests/limits, the 2-pod / 1-pod ratio, and for the kill: the wall time lost against the
undisturbed 2-pod run and the items recomputed (those of the killed pod's unpublished shard,
estimated from its rate; at most --shard-size). A JSON of it all goes to --out (default
$CLIPSERVE_CACHE/bench-clipjob/<time>.json). Everything it made is removed at the end, the
cluster too unless it was already running or --keep is given (then it says how to stop it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the cluster harness in tests/

from tests.support.clipservices import get, items  # noqa: E402
from tests.support.cluster.harness import Cluster  # noqa: E402
from tests.support.cluster.node_config import POOL_LABEL, TOLERATION  # noqa: E402

JOB_LABEL = "clipserve.io/clipjob"
INDEX = "batch.kubernetes.io/job-completion-index"
OPERATOR_NS, OPERATOR_RELEASE = "clipserve-bench-op", "clipserve-op-bench"
OPERATOR_SELECTOR = "app.kubernetes.io/name=clipserve-operator"
WAIT_S = 900  # bounds a hung run; measures nothing
# (ClipJob name, pods, kill index 0 after its first shard)
RUNS = (("p1", 1, False), ("p2", 2, False), ("p2-kill", 2, True))


def _bench_embed() -> Any:
    """scripts/bench-embed.py, for its photo-like folder generator."""
    spec = importlib.util.spec_from_file_location("bench_embed", ROOT / "scripts/bench-embed.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resources(args: argparse.Namespace) -> dict[str, Any]:
    requests = {"cpu": args.cpu_request, "memory": "512Mi"}
    limits = {"memory": args.memory_limit, **({"cpu": args.cpu_limit} if args.cpu_limit else {})}
    return {"requests": requests, "limits": limits}


def clipjob(args: argparse.Namespace, ns: str, run: str, pods: int, claims: tuple[str, str]):
    """The ClipJob of one run: the input claim, its own path of the output claim."""
    spec = {
        "model": args.model,
        "dtype": args.dtype,
        "device": "cpu",
        "nodePool": {"nodeSelector": POOL_LABEL, "tolerations": [TOLERATION]},
        "resources": resources(args),
        "parallelism": pods,
        "shardSize": args.shard_size,
        "input": {"pvc": {"claimName": claims[0]}},
        "output": {"pvc": {"claimName": claims[1], "path": run}},
    }
    meta = {"name": f"bench-{run}", "namespace": ns}
    return {
        "apiVersion": "clipserve.io/v1alpha1",
        "kind": "ClipJob",
        "metadata": meta,
        "spec": spec,
    }


def claim(ns: str, name: str) -> dict[str, Any]:
    """A claim of the static PersistentVolume of storage class `name` (tests/support/volumes)."""
    spec = {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": name,
        "resources": {"requests": {"storage": "1Gi"}},
    }
    meta = {"name": name, "namespace": ns}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def check_against_crd(doc: dict[str, Any]) -> None:
    """Sanity: every spec field is one the CRD knows (the apiserver would prune the others)."""
    crd = yaml.safe_load((ROOT / "charts/clipserve-operator/crds/clipjobs.yaml").read_text())
    known = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    unknown = set(doc["spec"]) - set(known["properties"])
    if unknown:
        raise SystemExit(f"fields the ClipJob CRD does not have: {sorted(unknown)}")


def epoch(stamp: str) -> float:
    """An RFC 3339 time (the apiserver's seconds, or the kubelet's nanoseconds) as epoch s."""
    m = re.fullmatch(r"([0-9-]+T[0-9:]+)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {stamp!r}")
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(m[1] + (m[2] or "")[:7] + zone).timestamp()


def log_events(cluster: Cluster, ns: str, pod: str) -> list[tuple[float, dict[str, Any]]]:
    """The pod's `clipserve embed` JSON lines, each with the time the kubelet logged it."""
    out = []
    for line in cluster.kubectl("logs", pod, "-n", ns, "--timestamps").splitlines():
        stamp, _, text = line.partition(" ")
        if text.startswith('{"event"'):
            out.append((epoch(stamp), json.loads(text)))
    return out


def pod_record(cluster: Cluster, ns: str, pod: dict[str, Any], events: list) -> dict[str, Any]:
    """When the pod was scheduled, started, loaded its model, published its first shard."""
    status = pod["status"]
    scheduled = next(
        epoch(c["lastTransitionTime"])
        for c in status.get("conditions", [])
        if c["type"] == "PodScheduled"
    )
    state = (status.get("containerStatuses") or [{}])[0].get("state", {})
    ran = state.get("terminated") or state.get("running") or {}
    started = epoch(ran["startedAt"]) if ran.get("startedAt") else None
    start = next((t for t, e in events if e["event"] == "start"), None)
    first = next((t for t, e in events if e["event"] == "shard"), None)
    done = next((e for _, e in events if e["event"] == "done"), None)
    container = pod["spec"]["containers"][0]
    return {
        "pod": pod["metadata"]["name"],
        "index": int(pod["metadata"]["annotations"][INDEX]),
        "resources": container.get("resources", {}),
        "load_s": round(start - started, 1) if start and started else None,
        "overhead_s": round(first - scheduled, 1) if first else None,
        "shards": sum(e["event"] == "shard" for _, e in events),
        "start": next((e for _, e in events if e["event"] == "start"), None),
        "done": done,
        "scheduled": scheduled,
        "last_shard": max((t for t, e in events if e["event"] == "shard"), default=None),
    }


def run_job(cluster: Cluster, ns: str, doc: dict[str, Any], kill: bool, shard: int) -> dict:
    """Apply one ClipJob and follow it to Succeeded (deleting index 0's first pod after its
    first shard when `kill`); what it measured."""
    name = doc["metadata"]["name"]
    selector = f"{JOB_LABEL}={name}"
    t0 = time.time()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    victim: dict[str, Any] | None = None
    peak_rate = 0.0
    while True:
        status = (get(cluster, "clipjob", name, ns) or {}).get("status") or {}
        peak_rate = max(peak_rate, float(status.get("itemsPerSecond") or 0))
        if status.get("phase") == "Failed":
            raise SystemExit(f"ClipJob {name} failed: {json.dumps(status)}")
        if status.get("phase") == "Succeeded":
            break
        if kill and victim is None:
            victim = _kill_after_first_shard(cluster, ns, selector)
        if time.time() - t0 > WAIT_S:
            raise SystemExit(f"ClipJob {name} not Succeeded after {WAIT_S} s: {status}")
        time.sleep(0.5 if kill and victim is None else 1.0)
    wall = time.time() - t0
    job = json.loads(cluster.kubectl("get", "job", status["job"], "-n", ns, "-o", "json"))
    pods = [
        pod_record(cluster, ns, p, log_events(cluster, ns, p["metadata"]["name"]))
        for p in items(cluster, "pods", ns, selector)
    ]
    done = [p["done"] for p in pods if p["done"]]
    result = {
        "clipjob": name,
        "pods": pods,
        "wall_s": round(wall, 1),
        "job_complete_s": round(epoch(job["status"]["completionTime"]) - t0, 1),
        "items": status["itemsDone"],
        "failed": status["itemsFailed"],
        "items_per_s_end_to_end": round(status["itemsDone"] / wall, 2),
        # each pod's rate after its model loaded, summed: the pods ran at the same time
        "items_per_s_after_load": round(sum(d["items_per_s"] for d in done), 2),
        "status_items_per_s_peak": peak_rate,
        # CPU time per item in the pods (every thread): equal for 1 and 2 pods when the node's
        # cores, not the pods, are the limit
        "cpu_ms_per_item": round(
            1000 * sum(d["cpu_seconds"] for d in done) / max(1, sum(d["items"] for d in done)), 1
        ),
    }
    if victim is not None:
        successor = next(p for p in pods if p["index"] == victim["index"])
        rate = victim["done_rate"] or 0.0
        since = victim["killed_at"] - (victim["last_shard"] or victim["killed_at"])
        victim["recomputed_items_est"] = min(shard, round(rate * since))
        victim["successor_skipped_shards"] = (successor["start"] or {}).get("skipped")
        victim["successor_start_after_kill_s"] = round(
            successor["scheduled"] - victim["killed_at"], 1
        )
        result["killed"] = victim
    return result


def _kill_after_first_shard(cluster: Cluster, ns: str, selector: str) -> dict[str, Any] | None:
    """Index 0's pod, deleted with no grace period once it has published a shard; or None."""
    for pod in items(cluster, "pods", ns, selector):
        meta = pod["metadata"]
        if meta["annotations"].get(INDEX) != "0" or pod["status"].get("phase") != "Running":
            continue
        events = log_events(cluster, ns, meta["name"])
        shards = [(t, e) for t, e in events if e["event"] == "shard"]
        if not shards:
            return None
        killed_at = time.time()
        cluster.kubectl("delete", "pod", meta["name"], "-n", ns, "--grace-period=0", "--force")
        record = pod_record(cluster, ns, pod, events)
        record.update(killed_at=killed_at, done_rate=shards[-1][1]["items_per_s"])
        return record
    return None


def written_ids(folder: Path) -> list[str]:
    """The ids in a run's published shards (sanity: each image once)."""
    import pyarrow.parquet as pq

    return [
        i
        for shard in sorted((folder / "shards").glob("shard-*.parquet"))
        for i in pq.read_table(shard).column("id").to_pylist()
    ]


def node_info(cluster: Cluster, name: str) -> dict[str, Any]:
    node = json.loads(cluster.kubectl("get", "node", name, "-o", "json"))
    return {
        "name": name,
        "capacity_cpu": node["status"]["capacity"]["cpu"],
        "allocatable_cpu": node["status"]["allocatable"]["cpu"],
        "machine_cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def install_operator(cluster: Cluster) -> bool:
    """The operator from its image with its chart, pinned to the real node, unless one runs
    already (two would both reconcile the ClipJobs); whether this installed it."""
    from tests.support.rendering import Helm, install_tool

    found = cluster.kubectl("get", "deploy", "-A", "-l", OPERATOR_SELECTOR, "-o", "name")
    if found.strip():
        print(f"operator already installed: {found.split()[0]}")
        return False
    values = {
        "nodeSelector": POOL_LABEL,
        "tolerations": [TOLERATION],
        "resyncSeconds": 60,
        "retryDelaySeconds": 2,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(values, fh)
        fh.flush()
        Helm(install_tool("install-helm.sh")).run(
            f"--kubeconfig={cluster.kubeconfig}",
            "install",
            OPERATOR_RELEASE,
            str(ROOT / "charts/clipserve-operator"),
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout=300s",
            "-f",
            fh.name,
        )
    return True


def print_table(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(
        f"\nmodel {results['model']} ({results['dtype']}), {results['images']} images "
        f"{results['size']} ({results['image_kb']} KB), shards of {results['shard_size']}"
    )
    n = results["node"]
    print(
        f"node {n['name']}: {n['capacity_cpu']} CPUs ({n['allocatable_cpu']} allocatable) of "
        f"this machine's {n['machine_cpus']}; load average {n['loadavg_at_start'][0]:.1f} at "
        f"the start, {n['loadavg_at_end'][0]:.1f} at the end"
    )
    head = ("run", "pods", "wall s", "Job done s", "items/s", "after load", "CPU-ms/item")
    head += ("load s", "overhead s")
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for r in runs.values():
        pods = sorted(r["pods"], key=lambda p: (p["index"], p["scheduled"]))
        load = " / ".join(str(p["load_s"]) for p in pods)
        over = " / ".join(str(p["overhead_s"]) for p in pods)
        cells = (r["clipjob"], len(pods), r["wall_s"], r["job_complete_s"])
        cells += (r["items_per_s_end_to_end"], r["items_per_s_after_load"], r["cpu_ms_per_item"])
        cells += (load, over)
        print("| " + " | ".join(str(c) for c in cells) + " |")
    p1, p2, kill = runs["p1"], runs["p2"], runs["p2-kill"]
    res = {p["pod"]: p["resources"] for r in runs.values() for p in r["pods"]}
    print(
        f"\n2 pods / 1 pod items/s: end to end {results['ratio_end_to_end']}, "
        f"after load {results['ratio_after_load']}"
    )
    print(f"each pod's resources: {json.dumps(next(iter(res.values())))}")
    k = kill["killed"]
    print(
        f"killed {k['pod']} {k['shards']} shard(s) in; its index resumed skipping "
        f"{k['successor_skipped_shards']} shard(s), its new pod scheduled "
        f"{k['successor_start_after_kill_s']} s after the kill; time lost: "
        f"{round(kill['wall_s'] - p2['wall_s'], 1)} s against the undisturbed 2-pod run; "
        f"items recomputed ~{k['recomputed_items_est']} (at most {results['shard_size']})"
    )
    print(
        f"killed pod's model load {k['load_s']} s; 1 pod: {p1['wall_s']} s wall, 2 pods: "
        f"{p2['wall_s']} s, 2 pods with one killed: {kill['wall_s']} s"
    )


def main() -> int:
    from tests.support.cluster.__main__ import _default_state_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240, help="JPEGs to embed (default 240)")
    parser.add_argument("--size", default="320x240", help="WxH of each (default 320x240)")
    parser.add_argument("--shard-size", type=int, default=16, help="items a shard (default 16)")
    parser.add_argument("--model", default="ViT-B-32:random", help="default ViT-B-32:random")
    parser.add_argument("--dtype", default="fp32", help="the ClipJob's dtype (default fp32)")
    parser.add_argument("--cpu-request", default="500m", help="each pod's (default 500m)")
    parser.add_argument("--cpu-limit", default="", help="each pod's (default: none)")
    parser.add_argument("--memory-limit", default="2Gi", help="each pod's (default 2Gi)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=_default_state_dir(),
        help="the cluster's, as `python -m tests.support.cluster`",
    )
    parser.add_argument("--out", type=Path, help="the JSON (default $CLIPSERVE_CACHE/...)")
    parser.add_argument(
        "--keep", action="store_true", help="keep cluster, operator, namespace, claims to inspect"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the manifests; no cluster")
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    if len(size) != 2 or args.images < 1 or args.shard_size < 1:
        parser.error("--size is WxH; --images and --shard-size are positive")
    make_folder = _bench_embed().make_folder
    if args.dry_run:
        return dry_run(args, make_folder, size)
    return measure(args, make_folder, size)


def dry_run(args: argparse.Namespace, make_folder: Any, size: tuple[int, ...]) -> int:
    ns, claims = "clipjob-bench", ("clipjob-bench-in", "clipjob-bench-out")
    with tempfile.TemporaryDirectory() as tmp:
        total = make_folder(Path(tmp), args.images, size)
    print(
        f"# {args.images} JPEGs of {args.size}, {total // args.images // 1024} KB each;"
        f" runs in turn (kill: index 0 deleted after its first shard): {RUNS}"
    )
    docs = [claim(ns, c) for c in claims]
    for run, pods, _ in RUNS:
        docs.append(clipjob(args, ns, run, pods, claims))
        check_against_crd(docs[-1])
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


def measure(args: argparse.Namespace, make_folder: Any, size: tuple[int, ...]) -> int:
    from tests.support.cluster import __main__ as cluster_cli
    from tests.support.cluster.realnode import RealNode
    from tests.support.volumes import Volume

    state_dir = args.state_dir
    before = Cluster.load(state_dir)
    had_cluster = bool(before and before.running())
    old_node = RealNode.load(before) if before and had_cluster else None
    had_node = bool(old_node and old_node.running())
    if cluster_cli.up(state_dir, real_node=True) != 0:
        return 1
    cluster = Cluster.load(state_dir)
    node = RealNode.load(cluster) if cluster else None
    assert cluster and node, f"no cluster and real node recorded in {state_dir}"
    ns = f"clipjob-bench-{int(time.time())}"
    volumes: list[Volume] = []
    installed = False
    try:
        cluster.create_namespace(ns)
        installed = install_operator(cluster)
        volumes = [Volume(cluster, f"{ns}-in"), Volume(cluster, f"{ns}-out")]
        total = make_folder(volumes[0].path, args.images, size)
        claims = (volumes[0].name, volumes[1].name)
        for c in claims:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(claim(ns, c)))
        results: dict[str, Any] = {
            "model": args.model,
            "dtype": args.dtype,
            "images": args.images,
            "size": args.size,
            "image_kb": round(total / args.images / 1024, 1),
            "shard_size": args.shard_size,
            "node": node_info(cluster, node.name),
            "runs": {},
        }
        for run, pods, kill in RUNS:
            print(f"ClipJob bench-{run}: {pods} pod(s){', one killed' if kill else ''}...")
            doc = clipjob(args, ns, run, pods, claims)
            results["runs"][run] = r = run_job(cluster, ns, doc, kill, args.shard_size)
            ids = written_ids(volumes[1].path / run)
            # sanity, not a test: every image once, none failed
            if (len(ids), len(set(ids)), r["items"], r["failed"]) != (args.images,) * 3 + (0,):
                raise SystemExit(f"{run}: {len(ids)} ids ({len(set(ids))} distinct), {r}")
            print(f"  {r['wall_s']} s, {r['items_per_s_end_to_end']} items/s end to end")
        p1, p2 = results["runs"]["p1"], results["runs"]["p2"]
        for key in ("end_to_end", "after_load"):
            a, b = p1[f"items_per_s_{key}"], p2[f"items_per_s_{key}"]
            results[f"ratio_{key}"] = round(b / a, 2) if a else None
        results["time_lost_to_kill_s"] = round(
            results["runs"]["p2-kill"]["wall_s"] - p2["wall_s"], 1
        )
        results["node"]["loadavg_at_end"] = os.getloadavg()
        out = args.out or Path(
            os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"),
            "bench-clipjob",
            time.strftime("%Y%m%d-%H%M%S") + ".json",
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print_table(results)
        print(f"\nJSON: {out}")
    finally:
        if args.keep:
            print(
                f"kept: namespace {ns}, claims' folders {[str(v.path) for v in volumes]}; stop "
                f"the cluster with: python -m tests.support.cluster down --state-dir {state_dir}"
            )
        else:
            try:
                if had_cluster:  # it outlives this run: leave it as it was
                    cleanup(cluster, ns, volumes, installed)
                else:
                    for v in volumes:
                        v.remove()
            finally:
                if not had_cluster:
                    cluster_cli.down(state_dir)
                elif not had_node:
                    node.stop()
    return 0


def cleanup(cluster: Cluster, ns: str, volumes: list[Any], installed: bool) -> None:
    """What this run made in a cluster that may outlive it."""
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    cluster.kubectl(
        "wait", "--for=delete", "pods", "--all", "-n", ns, "--timeout=180s", timeout=200
    )
    for v in volumes:
        v.remove()
    if installed:
        from tests.support.rendering import Helm, install_tool

        helm = Helm(install_tool("install-helm.sh"))
        helm.run(
            f"--kubeconfig={cluster.kubeconfig}",
            "uninstall",
            OPERATOR_RELEASE,
            "-n",
            OPERATOR_NS,
            "--wait",
        )
        cluster.kubectl("delete", "namespace", OPERATOR_NS, "--wait=false")


if __name__ == "__main__":
    sys.exit(main())
