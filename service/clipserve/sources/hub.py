"""A model's Hugging Face tokenizer files: into the cache, or refused when offline.

`clipserve serve` calls `fetch_tokenizer` at start-up and `clipserve download` ahead of time;
both fill the same cache as the weights (the HF hub layout under `--cache-dir`, or the default
HF cache).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from clipserve.sources.http_failures import host_of, is_request_failure, reason

# What AutoTokenizer reads from a repo; weights and model configs are left out.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",  # sentencepiece (spiece.model, tokenizer.model)
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
# tokenizer_config.json names the class; one of these holds the vocabulary.
_VOCABULARIES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.txt", "vocab.json")


class HubFileMissing(Exception):
    """A file the model needs is not in the cache and may not (or could not) be downloaded."""


def _where(cache_dir: str | None) -> str:
    return cache_dir or "the default Hugging Face cache"


def _unreachable(repo: str, exc: BaseException) -> HubFileMissing:
    return HubFileMissing(
        f"tokenizer {repo}: could not fetch its files from {host_of(constants.ENDPOINT)}: "
        f"{reason(exc)}"
    )


def fetch_tokenizer(repo: str, *, cache_dir: str | None, offline: bool) -> Path:
    """The folder holding `repo`'s tokenizer files, downloading them unless `offline`."""
    try:
        folder = Path(
            snapshot_download(
                repo,
                allow_patterns=list(TOKENIZER_FILES),
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        )
    except LocalEntryNotFoundError as exc:
        if offline:
            raise HubFileMissing(
                f"tokenizer {repo}: tokenizer_config.json is not in {_where(cache_dir)} and "
                "--offline forbids downloading it"
            ) from exc
        raise _unreachable(repo, exc) from exc  # the hub client wraps the network error in it
    except ValueError as exc:
        raise HubFileMissing(f"tokenizer {repo}: could not download its files ({exc})") from exc
    except Exception as exc:  # whatever HTTP library the hub client uses this year
        if not is_request_failure(exc):
            raise
        raise _unreachable(repo, exc) from exc
    if not (folder / "tokenizer_config.json").is_file():
        raise HubFileMissing(f"tokenizer {repo}: tokenizer_config.json is missing from {folder}")
    if not any((folder / name).is_file() for name in _VOCABULARIES):
        raise HubFileMissing(
            f"tokenizer {repo}: no vocabulary in {folder} "
            f"(expected one of {', '.join(_VOCABULARIES)})"
        )
    return folder
