import pytest
import torch

from medops.errors import ConfigError
from medops.metrics import segmentation_metrics
from medops.models import get_model, list_models


# every registered model builds by name from explicit primitives: segmentation nets give a mask logit per
# pixel, classifiers a logit per class
SMALL3D = {"channels": (2, 4, 4, 8, 8), "hidden": 8}
CUBE = (2, 1, 16, 16, 16)
BUILD = {"transfer_cls": ({"backbone": "resnet50", "num_classes": 2}, (2, 3, 32, 32), (2, 2)),
         # 3-D nodule classifiers (paper 004): a cube in, a logit per class out
         "nodule3d_ensemble": ({"scales": (8, 12, 16), **SMALL3D}, CUBE, (2, 2)),
         "nodule3d_subnet": ({"scale": 12, **SMALL3D}, CUBE, (2, 2)),
         "nodule3d_ifm": ({"cube": 16, **SMALL3D}, CUBE, (2, 2)),
         "monai_resnet3d": ({"scale": 16, "widths": (4, 8, 8, 16)}, CUBE, (2, 2)),
         "monai_densenet3d": ({"scale": 16, "init_features": 4, "growth_rate": 4, "block_config": (1, 1, 1)}, CUBE,
                              (2, 2))}
# vision-language models (paper 003): (image, prompt ids, prompt mask, report ids) in, (triage logits, next-word
# logits) out
SMALL_VL = {"vocab_size": 20, "image_size": 32, "width": 16, "heads": 2, "max_len": 8, "block_config": (1, 1),
            "growth_rate": 4, "init_features": 8, "embed_dim": 8,
            "text_config": {"embedding_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 16}}
VL_INPUTS = lambda: (torch.rand(2, 1, 32, 32), torch.randint(3, 20, (2, 3)), torch.ones(2, 3, dtype=torch.long),  # noqa: E731
                     torch.randint(3, 20, (2, 6)))
BUILD_VL = {"vl_fusion": SMALL_VL, "vl_lstm_attention": SMALL_VL}


@pytest.mark.parametrize("name", list_models())
def test_registered_models_build_and_run(name):
    if name in BUILD_VL:
        triage, words = get_model(name, **BUILD_VL[name])(*VL_INPUTS())
        assert triage.shape == (2, 3) and words.shape == (2, 5, 20)
        return
    kwargs, x, shape = BUILD.get(name, ({"channels": (4, 8, 16)}, (2, 3, 32, 32), (2, 1, 32, 32)))
    net = get_model(name, **kwargs)
    y = net(torch.rand(*x))
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


def _fixed_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    y = torch.zeros(2, 1, 16, 16)
    y[:, :, 4:12, 4:12] = 1.0
    x[:, 2] += 2 * y[:, 0]  # the target is visible in the MRI channel
    return x, y


@pytest.mark.parametrize("fusion", ["early", "late", "concat", "attention"])
def test_every_fusion_strategy_trains_a_step(fusion):
    """A step changes every trained parameter group and lowers the loss on a fixed batch."""
    torch.manual_seed(0)
    net = get_model("fusion_seg", fusion=fusion, channels=(4, 8))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = _fixed_batch()
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    before = {k: v.detach().clone() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    net.train()
    first = None
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    changed = [k for k, v in net.state_dict().items() if k in before and not torch.equal(before[k], v)]
    assert len(changed) > len(before) // 2
    net.eval()
    with torch.no_grad():
        after = float(loss_fn(net(x), y))
    assert after < first


def test_late_fusion_learns_modality_weights():
    """Late fusion weighs each modality's prediction; training on data where only MRI shows the target
    moves the weights away from uniform, towards MRI."""
    torch.manual_seed(0)
    net = get_model("fusion_seg", fusion="late", channels=(4, 8))
    assert len(net.nets) == 3 and net.logit_weights.shape == (3,)
    w0 = net.attention_weights()
    assert abs(sum(w0.values()) - 1) < 1e-6 and max(w0.values()) - min(w0.values()) < 1e-6
    opt = torch.optim.Adam(net.parameters(), 3e-2)
    x, y = _fixed_batch()
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    w = net.attention_weights()
    assert abs(sum(w.values()) - 1) < 1e-5
    assert max(w.values()) - min(w.values()) > 0.01
    assert max(w, key=w.get).endswith("mri"), w


def test_early_fusion_has_one_encoder_over_the_stack():
    net = get_model("fusion_seg", fusion="early", modalities=("us", "mri"), channels=(4, 8))
    assert list(net.encoders) == ["stack"]
    assert net.encoders["stack"].stages[0].conv.unit0.conv.in_channels == 2
