"""What a layer is, read from a checkpoint's tensor names: the tensors under
`<prefix>.<layers|h|blocks|layer>.<i>.` (Llama and Qwen `model.layers.3.`, GPT-2
`transformer.h.3.`, `model.language_model.layers.3.` in a multimodal wrapper). The one
definition behind depth schedules (merge/config.py), the layer count when config.json has none
(merge/executor.py) and Sens's per-layer coefficients (calibration/sensitivity.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# The first numbered block in the name: an expert or head number further in is not a layer.
_LAYER = re.compile(r"^(.*?\.(?:layers|h|blocks|layer)\.(\d+))\.")


def layer_of(tensor_name: str) -> tuple[str, int] | None:
    """(the layer's prefix, its index) for a tensor inside a numbered layer, e.g.
    ("model.layers.3", 3) for "model.layers.3.mlp.up_proj.weight"; None outside every layer
    (embeddings, the final norm, the head)."""
    match = _LAYER.match(tensor_name)
    return None if match is None else (match.group(1), int(match.group(2)))


def count_layers(tensor_names: Iterable[str]) -> int:
    """1 + the largest layer index among the names; 0 when none is inside a layer."""
    indices = [found[1] for name in tensor_names if (found := layer_of(name)) is not None]
    return max(indices) + 1 if indices else 0
