"""Configuration: one typed object, built once from CLI flags over CLIPSERVE_* variables.

Every field is documented here; `clipserve serve --help` and the README's configuration table
are generated from (and tested against) these docs.
"""

from __future__ import annotations

import argparse
import functools
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

ENV_PREFIX = "CLIPSERVE_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _doc(text: str, default: Any = MISSING) -> Any:
    """A field with its documentation attached (for --help and the README)."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Settings:
    """Everything `clipserve serve` can be told."""

    model: tuple[str, ...] = _doc(
        "Model spec(s) to serve, ARCH:TAG (open_clip pretrained tag, checkpoint URL with an "
        "optional #sha256=, checkpoint file or folder, or `random`) or hf-hub:org/repo; repeat "
        "the flag or comma-separate. The first is the default.",
        ("ViT-B-32:openai",),
    )
    host: str = _doc("Address to listen on (containers use 0.0.0.0).", "127.0.0.1")
    port: int = _doc("HTTP port for the API and /metrics.", 3000)
    device: str = _doc(
        "auto (cuda when usable; the CPU only when no GPU was assigned: with "
        "NVIDIA_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES naming GPUs, unusable CUDA stops "
        "start-up with the cause), cpu, cuda or cuda:N.",
        "auto",
    )
    dtype: str = _doc(
        "auto (fp16 on CUDA; on a CPU, bf16 where it has bf16 units (AMX-BF16, AVX512-BF16, "
        "Arm BF16) and a start-up self-check agrees with fp32, else fp32; /models says why), "
        "fp32 (bit-exact), fp16 (CUDA only) or bf16 (refused on a CPU without bf16 units).",
        "auto",
    )
    cache_dir: str | None = _doc(
        "Where downloaded weights and tokenizer files are cached (default: the HF hub cache); "
        "`clipserve download` fills it ahead of time.",
        None,
    )
    offline: bool = _doc(
        "Download nothing: weights and tokenizer files must already be in the cache; start-up "
        "fails naming the first missing file.",
        False,
    )
    model_config_dir: str | None = _doc(
        "Folder (or JSON file) of extra open_clip architecture configs to register.", None
    )
    max_batch_size: int = _doc(
        "Most items in one forward pass; 0 picks a default for the device (128 CUDA, 16 CPU).", 0
    )
    max_wait_ms: float = _doc(
        "Longest an idle worker waits for a batch to fill (it stops waiting once as many items "
        "as its last batch are in); 0 picks a default for the device (5 CUDA, 20 CPU).",
        0.0,
    )
    max_queue: int = _doc("Items waiting per (model, modality) before requests get 503.", 2048)
    max_items: int = _doc(
        "Most items in one request (encode, or queries+candidates in rank); a JSON body with "
        "more than 1,024 values per item (+4,096) is refused (413) before it is decoded.",
        1024,
    )
    max_body_bytes: int = _doc("Largest request body accepted (413 above).", 64 * 2**20)
    max_text_chars: int = _doc(
        "Longest text accepted, in characters; texts longer than the model's context (77 "
        "tokens for CLIP) are truncated as CLIP's tokenizer does.",
        10_000,
    )
    max_image_bytes: int = _doc(
        "Largest image (blob, data: URI or download), in bytes.", 20 * 2**20
    )
    max_image_pixels: int = _doc("Largest image, in pixels (decompression-bomb guard).", 40_000_000)
    fetch_timeout_s: float = _doc("Total time allowed to download one img_uri.", 10.0)
    fetch_connect_timeout_s: float = _doc("Connect timeout for img_uri downloads.", 3.0)
    fetch_max_redirects: int = _doc("Redirects followed per img_uri (each one re-checked).", 3)
    fetch_allow: tuple[str, ...] = _doc(
        "CIDRs or host names img_uri may reach despite the SSRF guard (e.g. an in-cluster "
        "image store). By default private, loopback and link-local addresses are refused.",
        (),
    )
    fetch_concurrency: int = _doc(
        "img_uri downloads one request runs at once; its other URLs wait their turn.", 16
    )
    fetch_buffer_bytes: int = _doc(
        "Bytes of downloaded images awaiting decoding, across all requests; a download that "
        "would pass it waits its turn (oldest request first) up to 2 s, then its request gets "
        "503 with Retry-After. At least --max-image-bytes.",
        256 * 2**20,
    )
    preprocess_threads: int = _doc("Threads that decode and preprocess images.", 4)
    compute_workers: int = _doc(
        "Forward passes each model runs at once, each in its own thread; 0: one per usable CPU "
        "(affinity mask and cgroup quota) on CPU, where several single-threaded batches beat "
        "one batch spread over every core, and 1 on CUDA or with --compile.",
        0,
    )
    compute_threads: int = _doc(
        "torch intra-op threads for a single item while the other workers are idle (0: one per "
        "usable CPU); otherwise each worker runs single-threaded.",
        0,
    )
    compile: str = _doc(
        "torch.compile the image and text towers at start-up: off, default, reduce-overhead "
        "(CUDA graphs on CUDA) or max-autotune. Start-up takes longer (~40 s on 2 CPU cores "
        "for a tiny model, minutes for large ones); dynamic shapes keep one graph for every "
        "batch size and text length. Needs one compute worker.",
        "off",
    )
    device_failures: int = _doc(
        "Batches in a row whose every item fails with a device error (a CUDA error such as an "
        "illegal memory access; not out-of-memory) after which a model is taken out of service "
        "if an item it embedded before fails too: /readyz and /healthz answer 503, so the "
        "kubelet restarts the pod. 0: never.",
        3,
    )
    cache_mb: float = _doc(
        "Embedding cache size in MB, shared by every route and model (0 turns it off): a text, "
        "or an image's bytes once fetched, embedded before by the same model is not embedded "
        "again (zero-shot label prompts, /rank candidates). About 2.7 KB per 512-d embedding.",
        64.0,
    )
    drain_grace_s: float = _doc(
        "After SIGTERM, keep accepting requests this long (readiness is already failing) so "
        "load balancers can stop sending traffic.",
        5.0,
    )
    drain_timeout_s: float = _doc(
        "Then wait at most this long for queued and in-flight requests to finish.", 20.0
    )
    api_key: tuple[str, ...] = _doc(
        "Bearer API key(s) required on every path except the open ones and the pages (the "
        "playground, Swagger UI and the OpenAPI document, which ask for a key themselves); none "
        "means no auth.",
        (),
    )
    api_key_file: str | None = _doc(
        "File with one API key per line (e.g. a mounted Secret); one that holds no key stops "
        "start-up (an empty Secret must not mean no auth).",
        None,
    )
    open_paths: tuple[str, ...] = _doc(
        "Paths reachable without an API key.", ("/healthz", "/readyz", "/metrics")
    )
    playground: bool = _doc(
        "Serve the playground page at / (classify an image, rank images against a text); "
        "`--no-playground` turns it off. Swagger UI stays at /schema/swagger.",
        True,
    )
    log_level: str = _doc("Logging level: debug, info, warning, error.", "info")

    def api_keys(self) -> frozenset[str]:
        """Keys from `api_key` and `api_key_file` together; ValueError if the file is
        configured but cannot be read or holds no key."""
        keys = set(self.api_key)
        if self.api_key_file:
            where = f"--api-key-file {self.api_key_file}"
            try:
                with open(self.api_key_file, encoding="utf-8") as fh:
                    from_file = {line.strip() for line in fh if line.strip()}
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{where}: cannot read the API keys ({exc})") from exc
            if not from_file:
                raise ValueError(
                    f"{where} holds no API key (it is empty or blank), and serving without "
                    "auth is not what a key file asks for: put one key per line in it (is the "
                    "Secret's key filled?), or unset it to serve without keys"
                )
            keys |= from_file
        return frozenset(keys)

    def batch_size_for(self, device_type: str) -> int:
        """The configured max batch size, or the device's default."""
        if self.max_batch_size > 0:
            return self.max_batch_size
        return 128 if device_type == "cuda" else 16

    def wait_ms_for(self, device_type: str) -> float:
        """The configured max wait, or the device's default (a few % of a typical pass)."""
        if self.max_wait_ms > 0:
            return self.max_wait_ms
        return 5.0 if device_type == "cuda" else 20.0

    def workers_for(self, device_type: str) -> int:
        """The configured compute workers per model, or the device's default."""
        if self.compute_workers > 0:
            return self.compute_workers
        if device_type == "cuda" or self.compile != "off":
            return 1
        return available_cpus()

    def threads(self) -> int:
        """Intra-op threads of a lone worker: configured, or the CPUs this process may use."""
        return self.compute_threads if self.compute_threads > 0 else available_cpus()


def available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    A pod limited to 4 CPUs on a 64-core node sees 64 in os.cpu_count() (and torch starts 64
    threads); running that many threads against a 4-CPU quota only adds throttling.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        with open(cpu_max, encoding="ascii") as fh:
            quota, period = fh.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))  # ceil
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU controller visible: no quota to honour
    return cpus


def env_name(name: str) -> str:
    """CLIPSERVE_* variable for a field."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """CLI flag for a field."""
    return "--" + name.replace("_", "-")


def _flags(name: str) -> str:
    """How the README names a field's flag(s): `--[no-]x` for an on/off setting."""
    if _base_type(_hints()[name]) is bool:
        return "--[no-]" + name.replace("_", "-")
    return flag_name(name)


def _base_type(tp: Any) -> Any:
    """`str | None` -> str, `tuple[str, ...]` -> tuple."""
    if isinstance(tp, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return typing.get_origin(tp) or tp


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _parse(name: str, raw: str) -> Any:
    base = _base_type(_hints()[name])
    if base is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if base is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise SystemExit(f"clipserve: {name}: {raw!r} is not one of {', '.join(_TRUE + _FALSE)}")
    try:
        return base(raw)
    except ValueError as exc:
        raise SystemExit(f"clipserve: {name}: {raw!r} is not a valid {base.__name__}") from exc


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from CLIPSERVE_* variables over the defaults."""
    env = os.environ if environ is None else environ
    values = {
        f.name: _parse(f.name, env[env_name(f.name)])
        for f in fields(Settings)
        if env_name(f.name) in env
    }
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] = ()) -> None:
    """One flag per field (or per field in `only`); defaults are left unset so the environment
    shows through."""
    for f in fields(Settings):
        if only and f.name not in only:
            continue
        base = _base_type(_hints()[f.name])
        default = f.default if f.default is not None else "unset"
        if isinstance(default, tuple):
            default = ",".join(default) or "none"
        help_text = f"{f.metadata['doc']} [{env_name(f.name)}; default: {default}]"
        if base is tuple:
            parser.add_argument(
                flag_name(f.name), dest=f.name, action="append", help=help_text, metavar="VALUE"
            )
        elif base is bool:  # --x / --no-x
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(f.name), dest=f.name, help=help_text, metavar=base.__name__.upper()
            )


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """CLI flags over CLIPSERVE_* variables over the defaults."""
    settings = from_env(environ)
    overrides: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(value, bool):
            overrides[f.name] = value
        elif isinstance(value, list):  # repeated flag, each may itself be a comma list
            overrides[f.name] = tuple(p.strip() for v in value for p in v.split(",") if p.strip())
        else:
            overrides[f.name] = _parse(f.name, value)
    return replace(settings, **overrides)


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| Flag | Variable | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default) or "(none)"
        elif isinstance(default, bool):
            default = str(default).lower()
        elif default is None:
            default = "(unset)"
        rows.append(
            f"| `{_flags(f.name)}` | `{env_name(f.name)}` | `{default}` | {f.metadata['doc']} |"
        )
    return "\n".join(rows)
