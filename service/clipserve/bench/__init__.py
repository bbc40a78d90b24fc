"""`clipserve bench`: a bounded async load generator, and the raw model's ceiling in the same run.

The served numbers (items/s, latency percentiles, errors) come from real HTTP requests against a
running server (loopback by default, or one this command spawns). The ceiling is the best items/s
of the model's forward pass alone (no HTTP, no decode) over a range of batch sizes, measured in
this process with the same spec, device, dtype and compile mode: its peak (the fastest pass)
and its sustained rate (passes back to back); served/ceiling is the share of the model's speed
the service delivers, against each.

Modules, each importable on its own (this package imports none of them, so the `clipserve`
command loads only `cli` until `clipserve bench` runs): `cli` (flags), `config` (BenchConfig),
`run` (run_bench), `workloads` (request bodies), `loadgen` (run_load), `ceiling`
(measure_ceiling), `report` (text and PNG), `server` (the one `clipserve serve` launcher) and
`scrape` (the one /metrics reader), the last two shared with the tests and scripts/soak.py.
"""
