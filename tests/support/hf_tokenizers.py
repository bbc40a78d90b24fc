"""Hugging Face tokenizers made here, for models whose tokenizer lives only on the hub.

The hub is out of reach in tests, so each kind is built with the same library (`tokenizers`,
saved through transformers as AutoTokenizer reads it) and a small vocabulary, then put in a
Hugging Face cache under the real repo's name, exactly where `clipserve serve` looks for it.
What this cannot test: the real repos' files (vocabularies, tokenizer_config.json contents).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "a photo of a dog",
    "a cat on a red sofa in the sun",
    "the quick brown fox jumps over the lazy dog",
    "a diagram of a neural network, drawn by hand",
] * 10


def _unigram(special: list[str], eos: str) -> Tokenizer:
    """SentencePiece-style Unigram, the EOS appended (T5 for SigLIP; Gemma-like for SigLIP2)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=special, unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
    )
    return tok


def _wordpiece() -> Tokenizer:
    """BERT-style WordPiece with [CLS] ... [SEP] (CLIPA's bert-base-uncased)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=150, special_tokens=special)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def make_tokenizer(repo: str, folder: Path) -> Path:
    """A tokenizer of the kind `repo` holds, saved to `folder` as AutoTokenizer reads it."""
    if "bert" in repo:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=_wordpiece(),
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    elif "SigLIP2" in repo:  # Gemma: pad 0, EOS appended
        tok = _unigram(["<pad>", "<eos>", "<bos>", "<unk>"], "<eos>")
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
        )
    else:  # T5 (SigLIP): pad 0, EOS 1
        tok = _unigram(["<pad>", "</s>", "<unk>"], "</s>")
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
        )
    fast.save_pretrained(folder)
    return folder


def put_in_hub_cache(cache_dir: Path, repo: str, files: Path) -> Path:
    """Place `files` as the cached snapshot of `repo` (the layout huggingface_hub reads)."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = cache_dir / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    shutil.copytree(files, snapshot, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def cache_tokenizer(cache_dir: Path, repo: str, work: Path) -> Path:
    """Make a tokenizer for `repo` and put it in the cache; returns the snapshot folder."""
    return put_in_hub_cache(cache_dir, repo, make_tokenizer(repo, work / repo.replace("/", "--")))
