"""One definition of a layer (merge/layers.py), as depth schedules, the layer count and Sens's
groups read it."""

import pytest

from l2smerge.calibration import layer_group
from l2smerge.merge.layers import count_layers, layer_of


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("model.layers.3.mlp.up_proj.weight", ("model.layers.3", 3)),
        ("transformer.h.11.attn.c_attn.weight", ("transformer.h.11", 11)),
        ("model.layers.2.mlp.experts.7.w1.weight", ("model.layers.2", 2)),  # not expert 7
        ("model.language_model.layers.0.mlp.up.weight", ("model.language_model.layers.0", 0)),
        ("model.embed_tokens.weight", None),
        ("model.norm.weight", None),
        ("lm_head.weight", None),
    ],
)  # fmt: skip
def test_layer_of_a_tensor_name(name, layer):
    assert layer_of(name) == layer
    assert layer_group(name) == (layer[0] if layer else name.rsplit(".", 1)[0])


def test_count_layers():
    names = ["model.embed_tokens.weight", "model.layers.0.a.weight", "model.layers.5.b.weight"]
    assert count_layers(names) == 6
    assert count_layers(["model.layers.1.mlp.experts.40.w1.weight"]) == 2
    assert count_layers(["lm_head.weight"]) == 0
