"""`clipserve serve | download | models | encode | embed | device | bench | gate`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from clipserve import __version__, gate
from clipserve.bench import cli as bench
from clipserve.corpus import command as embed
from clipserve.http.lifecycle import Lifecycle
from clipserve.redact import redact, redact_logs
from clipserve.settings import Settings, add_arguments, from_args

log = logging.getLogger("clipserve")


class DrainingServer(uvicorn.Server):
    """uvicorn that, on the first SIGTERM/SIGINT, fails readiness but keeps serving for a grace
    period (so endpoints can be removed), then stops: it waits for in-flight requests, and the
    lifespan drains the batch queues. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._lifecycle.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._lifecycle.draining = True
        log.info(
            "%s: readiness off, still serving for %.1fs, then draining",
            signal.Signals(sig).name,
            self._grace_s,
        )
        # Stopping through should_exit (not uvicorn's handler) makes a drained exit a clean 0.
        timer = threading.Timer(self._grace_s, lambda: setattr(self, "should_exit", True))
        timer.daemon = True
        timer.start()


def serve(settings: Settings) -> int:
    """Run the HTTP server until stopped; 1 if start-up failed."""
    from clipserve.http.app import create_app  # imports torch/open_clip: keep `--help` fast

    lifecycle = Lifecycle()
    try:
        app = create_app(settings, lifecycle)
    except ValueError as exc:  # a malformed model spec
        print(f"clipserve: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        lifespan="on",
        # C parser and loop: the event loop's share of a core at concurrency 32 fell from
        # 0.07-0.08 to 0.05 (docs/performance.md); named, so a missing one fails loudly.
        loop="uvloop",
        http="httptools",
    )
    server = DrainingServer(config, lifecycle, settings.drain_grace_s)
    lifecycle.request_exit = lambda: setattr(server, "should_exit", True)
    server.run()
    if lifecycle.load_error:
        print(f"clipserve: start-up failed: {lifecycle.load_error}", file=sys.stderr)
        return 1
    return 0


def list_models() -> int:
    """Print every ARCH:TAG open_clip can download, one per line."""
    from clipserve.models import available_specs

    print("\n".join(available_specs()))
    return 0


def encode_once(settings: Settings, text: str | None, image: Path | None) -> int:
    """Load the first model here (no server) and print one embedding as JSON."""
    from clipserve.models import ModelLoadError, add_model_configs, load_model, parse_spec
    from clipserve.models.images import ImageLimits, prepare_image

    if settings.model_config_dir:
        add_model_configs(settings.model_config_dir)
    try:
        model = load_model(
            parse_spec(settings.model[0]),
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.cache_dir,
            offline=settings.offline,
        )
    except (ModelLoadError, ValueError) as exc:
        print(f"clipserve: {exc}", file=sys.stderr)
        return 1
    if image is not None:
        limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        pixels = prepare_image(image.read_bytes(), model.preprocessing.geometry, limits)
        vector = model.encode_image(pixels.unsqueeze(0))[0]
    else:
        vector = model.encode_text(model.tokenize([text or ""]))[0]
    print(json.dumps(vector.tolist()))
    return 0


def download(settings: Settings, bar: bool | None) -> int:
    """Fetch the weights and tokenizer files of every --model into --cache-dir (what `serve
    --offline` reads)."""
    from clipserve.models import (
        ModelLoadError,
        add_model_configs,
        check_spec,
        tokenizer_repo,
        weight_sources,
    )
    from clipserve.sources.download import DownloadError
    from clipserve.sources.hub import HubFileMissing, fetch_tokenizer
    from clipserve.sources.weights import cache_root
    from clipserve.sources.weights import download as fetch_all

    if settings.model_config_dir:
        add_model_configs(settings.model_config_dir)
    sources = []
    tokenizers: set[str] = set()
    try:
        for raw in settings.model:
            spec = check_spec(raw)
            sources += [(spec.raw, src) for src in weight_sources(spec)]
            tokenizers |= {repo} if (repo := tokenizer_repo(spec)) else set()
        report = fetch_all(sources, settings.cache_dir, bar=bar)
        for repo in sorted(tokenizers):
            folder = fetch_tokenizer(repo, cache_dir=settings.cache_dir, offline=False)
            print(f"clipserve download: tokenizer {repo} in {folder}")
    except (ModelLoadError, DownloadError, HubFileMissing, ValueError, OSError) as exc:
        log.debug("download failed", exc_info=True)  # the causes, for --log-level debug
        print(f"clipserve download: {redact(str(exc))}", file=sys.stderr)  # quotes the URL
        return 1
    print(
        f"clipserve download: {len(report.fetched)} file(s) fetched, {len(report.cached)} "
        f"already cached, {report.bytes} bytes in {report.seconds:.1f} s, in "
        f"{cache_root(settings.cache_dir)}"
    )
    return 0


def report_device(settings: Settings, report_to: Path | None) -> int:
    """Print the device `serve` computes on with these settings (cuda or cpu), then the dtype
    it would choose and why; write the device to report_to (in a pod's init container: its
    termination message, read by the operator)."""
    from clipserve.models.devices import DeviceError, select_device
    from clipserve.models.dtypes import DtypeError, plan

    try:
        device = select_device(settings.device)
        dtype = plan(settings.dtype, device)
    except (DeviceError, DtypeError) as exc:
        print(f"clipserve: {exc}", file=sys.stderr)
        return 1
    print(device.type)
    print(f"dtype: {dtype.describe()}")
    if report_to is not None:
        report_to.write_text(device.type)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI; `serve`'s flags come from Settings, each also a CLIPSERVE_* variable."""
    parser = argparse.ArgumentParser(prog="clipserve", description="CLIP embeddings over HTTP.")
    parser.add_argument("--version", action="version", version=f"clipserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser(
        "serve",
        help="serve the HTTP API (port 3000)",
        description="Serve /encode, /rank, /v1/embeddings, /models, "
        "/healthz, /readyz and /metrics.",
        epilog="Tracing: OpenTelemetry's own variables turn it on (OTEL_EXPORTER_OTLP_ENDPOINT, "
        "with OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME...; README, Tracing); unset, it is off.",
    )
    add_arguments(serve_p)
    sub.add_parser("models", help="list every ARCH:TAG open_clip can download")
    enc = sub.add_parser("encode", help="print one embedding (loads the model locally)")
    enc.add_argument("text", nargs="?", help="text to embed")
    enc.add_argument("--image", type=Path, help="image file to embed instead of text")
    add_arguments(enc)
    down = sub.add_parser(
        "download",
        help="fetch the weights of --model into --cache-dir ahead of serve --offline",
        description="Fetch every file the models need into the cache `serve` reads: resumed "
        "where a previous run stopped, verified (size; sha256 where the source gives one), "
        "files already there skipped. Progress: a bar on a terminal, else `progress DONE/TOTAL "
        "bytes` lines.",
    )
    down.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="bar, plain lines, or auto (a bar on a terminal)",
    )
    add_arguments(down, only=("model", "cache_dir", "model_config_dir", "log_level"))
    dev = sub.add_parser(
        "device",
        help="print the device serve would compute on (cuda or cpu) and its dtype",
        description="Resolve --device as serve does (a process given a GPU never falls back to "
        "the CPU); print cuda or cpu, then `dtype: ...`, the dtype --dtype gives there and why "
        "(on a CPU: its bf16 units). The chart runs it as an init container, so that each pod "
        "reports its own device.",
    )
    dev.add_argument("--report-to", type=Path, metavar="PATH", help="also write it to this file")
    add_arguments(dev)
    embed.add_parser(sub)
    bench.add_parser(sub)
    gate.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `clipserve` command."""
    args = build_parser().parse_args(argv)
    if args.command == "models":
        return list_models()
    if args.command == "bench":
        return bench.main(args)
    if args.command == "gate":
        return gate.main(args)
    if args.command == "embed":
        return embed.main(args)
    settings = from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # on clipserve's own loggers too: the app's logging config later resets the root to INFO
    logging.getLogger("clipserve").setLevel(settings.log_level.upper())
    redact_logs()  # no log line shows a checkpoint URL's credentials
    if args.command == "encode":
        if (args.text is None) == (args.image is None):
            print("clipserve encode: give a text or --image PATH (one of them)", file=sys.stderr)
            return 2
        return encode_once(settings, args.text, args.image)
    if args.command == "device":
        return report_device(settings, args.report_to)
    if args.command == "download":
        return download(settings, {"auto": None, "bar": True, "lines": False}[args.progress])
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
