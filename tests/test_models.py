import pytest
import torch

from medops.errors import ConfigError
from medops.metrics import segmentation_metrics
from medops.models import get_model, list_models


# every registered model builds by name from explicit primitives: segmentation nets give a mask logit per
# pixel, classifiers a logit per class
BUILD = {"transfer_cls": ({"backbone": "resnet50", "num_classes": 2}, (2, 2))}


@pytest.mark.parametrize("name", list_models())
def test_registered_models_build_and_run(name):
    kwargs, shape = BUILD.get(name, ({"channels": (4, 8, 16)}, (2, 1, 32, 32)))
    net = get_model(name, **kwargs)
    y = net(torch.rand(2, 3, 32, 32))
    assert y.shape == shape


def test_unknown_model_lists_available():
    with pytest.raises(ConfigError, match="fusion_seg"):
        get_model("nope")


@pytest.mark.parametrize("mods", [("us",), ("mg", "mri"), ("us", "mg", "mri")])
@pytest.mark.parametrize("fusion", ["attention", "concat"])
def test_modality_subsets_and_fusions(mods, fusion):
    net = get_model("fusion_seg", modalities=mods, fusion=fusion, channels=(4, 8))
    assert set(net.encoders) == set(mods)
    x = torch.rand(1, 3, 16, 16)
    y = net(x)
    assert y.shape == (1, 1, 16, 16)
    # a modality the model does not use has no influence on its output
    unused = [i for i, m in enumerate(("us", "mg", "mri")) if m not in mods]
    if unused:
        x2 = x.clone()
        x2[:, unused] = torch.rand_like(x2[:, unused])
        net.eval()
        assert torch.allclose(net(x), net(x2))


def test_attention_weights_sum_to_one_over_modalities():
    net = get_model("fusion_seg", channels=(4, 8))
    net(torch.rand(2, 3, 16, 16))
    for f in net.fusions:
        assert torch.allclose(f.last_weights.sum(dim=1), torch.ones(2, f.c))
    w = net.attention_weights()
    assert abs(sum(v for k, v in w.items() if k.startswith("attn_l0_")) - 1) < 1e-5


def test_unknown_fusion_and_modality():
    with pytest.raises(ConfigError, match="unknown fusion"):
        get_model("fusion_seg", fusion="magic")
    with pytest.raises(ConfigError, match="unknown modality"):
        get_model("fusion_seg", modalities=("ct",))


def test_metrics_match_paper_formulas():
    pred = torch.zeros(1, 1, 10, 10)
    truth = torch.zeros(1, 1, 10, 10)
    pred[0, 0, :5, :4] = 1     # 20 px
    truth[0, 0, :5, 2:8] = 1   # 30 px; overlap 10
    tp, fp, fn, tn = 10, 10, 20, 60
    m = {k: float(v) for k, v in segmentation_metrics(pred, truth).items()}
    assert m["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))


@pytest.mark.parametrize("fusion", ["early", "late", "concat", "attention"])
def test_every_fusion_strategy_trains_a_step(fusion):
    net = get_model("fusion_seg", fusion=fusion, channels=(4, 8))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_late_fusion_learns_modality_weights():
    net = get_model("fusion_seg", fusion="late", channels=(4, 8))
    assert len(net.nets) == 3 and net.logit_weights.shape == (3,)
    assert abs(sum(net.attention_weights().values()) - 1) < 1e-6


def test_early_fusion_has_one_encoder_over_the_stack():
    net = get_model("fusion_seg", fusion="early", modalities=("us", "mri"), channels=(4, 8))
    assert list(net.encoders) == ["stack"]
    assert net.encoders["stack"].stages[0].conv.unit0.conv.in_channels == 2
