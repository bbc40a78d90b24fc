"""The local cluster's own tests (the cluster: tests/support/cluster)."""
