"""The one MLP builder keeps the layer layout (state-dict keys) that saved model folders hold."""

from __future__ import annotations

from torch import nn

from mmfuse.mlp import build_mlp, build_task_head


def _layout(module: nn.Sequential) -> list[str]:
    return [type(layer).__name__ for layer in module]


def test_fusion_mlp_layout():
    mlp = build_mlp(8, [6, 4], 3, dropout=0.1, activation=nn.ReLU)
    assert _layout(mlp) == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [mlp[0].in_features, mlp[3].in_features, mlp[6].in_features, mlp[6].out_features] == [8, 6, 4, 3]
    assert _layout(build_mlp(8, [], 3)) == ["Linear"]


def test_task_head_layout_and_keys():
    plain = build_task_head(8, 3, None, 0.2)
    assert _layout(plain) == ["Dropout", "Linear"] and plain[0].p == 0.2
    assert sorted(plain.state_dict()) == ["1.bias", "1.weight"]
    hidden = build_task_head(8, 3, 5, 0.2)
    assert _layout(hidden) == ["Linear", "GELU", "Dropout", "Linear"]
    assert sorted(hidden.state_dict()) == ["0.bias", "0.weight", "3.bias", "3.weight"]
