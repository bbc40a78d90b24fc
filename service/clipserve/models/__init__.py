"""Models: the one wrapper around open_clip (nothing outside this package imports it).

A spec is `ARCH:TAG` where TAG is an open_clip pretrained tag (weights from the HF hub), a path
to a checkpoint file, or `random`; open_clip's `hf-hub:org/repo` and `local-dir:/path` forms are
accepted as they are. Each model is served the way it was trained: its own image preprocessing,
tokenizer and score objective (`recipe.py`, `clip.py`).
"""

from clipserve.models.clip import ClipModel, ModelLoadError, normalize
from clipserve.models.load import (
    add_model_configs,
    available_specs,
    check_spec,
    imagenet_classnames,
    imagenet_templates,
    load_model,
    weight_sources,
)
from clipserve.models.recipe import tokenizer_repo
from clipserve.models.spec import ModelSpec, parse_spec

__all__ = [
    "ClipModel",
    "ModelLoadError",
    "ModelSpec",
    "add_model_configs",
    "available_specs",
    "check_spec",
    "imagenet_classnames",
    "imagenet_templates",
    "load_model",
    "normalize",
    "parse_spec",
    "tokenizer_repo",
    "weight_sources",
]
