"""Local Kubernetes control plane for tests: real etcd/apiserver/controllers/scheduler, kwok nodes.

Binaries come from scripts/build-k8s.sh; `python -m tests.support.cluster up|down` (make cluster)
for manual use; the session fixture `cluster` (tests/conftest.py) for tests.
"""
