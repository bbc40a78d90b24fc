"""`clipserve embed`: whole corpora -> sharded, resumable Parquet, in this process.

The contract (inputs, output layout, slices, progress lines, exit codes) is docs/corpus.md.
This room imports downwards only: the engine's batching policy, the models' loading and
preprocessing, the sources' fetcher.
"""
