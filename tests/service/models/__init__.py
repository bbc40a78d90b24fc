"""Models: loading, preprocessing, dtypes and devices."""
