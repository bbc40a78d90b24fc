"""Fixtures shared across test areas (each area adds its own in its folder's conftest.py)."""
