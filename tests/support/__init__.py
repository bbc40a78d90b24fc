"""Helpers the tests share, in one place, and the local cluster (`make cluster` uses it too)."""
