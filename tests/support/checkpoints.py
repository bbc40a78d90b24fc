"""Weights made here (none can be downloaded): the tiny test architecture's random init from
a seed, so two seeds are two embedding spaces and one seed is always the same."""

from __future__ import annotations

import json

import open_clip
import torch

from tests.support.server import MODEL_CONFIGS

ARCH = "Tiny-ViT-T"
TINY_CFG = json.loads((MODEL_CONFIGS / f"{ARCH}.json").read_text())


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """The tiny architecture's weights drawn from `seed`, as a state dict to save."""
    open_clip.add_model_config(MODEL_CONFIGS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(ARCH, pretrained=None)
    return {k: v.contiguous() for k, v in model.state_dict().items()}
