"""The Python client (clipserve-client)."""
