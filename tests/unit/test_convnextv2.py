"""The ConvNeXt V2 specialist: global response normalization by hand, the paper's parameter counts, shapes."""

from __future__ import annotations

import pytest
import torch

from ringmoe.models.convnextv2 import GlobalResponseNorm, convnextv2


def test_global_response_norm_by_hand():
    grn = GlobalResponseNorm(2)
    x = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # (1, H=2, W=1, C=2): channel norms 5 and 1
    assert torch.equal(grn(x), x)  # gamma = beta = 0: the identity at initialization
    with torch.no_grad():
        grn.gamma.fill_(1.0)
        grn.beta.fill_(0.5)
    relative = torch.tensor([5.0, 1.0]) / (3.0 + 1e-6)  # each channel's norm over the mean norm
    assert torch.allclose(grn(x), x + x * relative + 0.5)


@pytest.mark.parametrize("variant, millions", [("atto", 3.7), ("femto", 5.2), ("pico", 9.1), ("nano", 15.6)])
def test_variants_have_the_papers_sizes(variant, millions):
    with torch.device("meta"):
        model = convnextv2(variant, in_chans=3, num_classes=1000)  # the paper counts the ImageNet head
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)


def test_stage_maps_and_pooled_features():
    model = convnextv2("atto", in_chans=4)
    maps = model.forward_features(torch.rand(2, 4, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4), (2, 320, 2, 2)]
    assert model(torch.rand(2, 4, 64, 64)).shape == (2, 320) and model.num_features == 320
