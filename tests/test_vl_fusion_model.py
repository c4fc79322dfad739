"""vl_fusion model (paper 003): every fusion variant runs its heads; the generation path is causal; CBAM
attends; greedy and beam search return reports; matching scores a changed fact differently."""

from __future__ import annotations

import pytest
import torch

from medops.models import get_model, list_models

SMALL = dict(vocab_size=50, image_size=64, width=32, heads=4, cross_layers=1, decoder_layers=1, max_len=16,
             block_config=(1, 1), growth_rate=8, init_features=16, embed_dim=16,
             text_config={"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "intermediate_size": 64})


def _batch(b=2, t=6, p=3):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(b, 1, 64, 64, generator=g)
    prompt = torch.randint(3, 50, (b, p), generator=g)
    tgt = torch.randint(3, 50, (b, t), generator=g)
    tgt[:, 0] = 1
    tgt[:, -1] = 2
    return img, prompt, torch.ones_like(prompt), tgt


def test_registered_by_name():
    assert {"vl_fusion", "vl_lstm_attention"} <= set(list_models())


@pytest.mark.parametrize("fusion", ["cross", "concat", "visual", "text", "early"])
def test_every_variant_gives_triage_and_next_word_logits(fusion):
    torch.manual_seed(0)
    net = get_model("vl_fusion", fusion=fusion, **SMALL).eval()
    img, prompt, pmask, tgt = _batch()
    tri, logits = net(img, prompt, pmask, tgt)
    assert tri.shape == (2, 3) and logits.shape == (2, tgt.shape[1] - 1, 50)
    assert torch.isfinite(logits).all()
    out = net.generate(img, prompt, pmask, max_len=8, beam=2)
    assert len(out) == 2 and all(len(s) <= 7 and all(3 <= w < 50 or w == 0 for w in s) for s in out)


def test_the_decoder_at_step_t_sees_only_the_prefix():
    """Changing the tokens after position t leaves the logits at positions <= t unchanged (no look-ahead)."""
    torch.manual_seed(0)
    net = get_model("vl_fusion", fusion="cross", **SMALL).eval()
    img, prompt, pmask, tgt = _batch(t=10)
    t = 4
    changed = tgt.clone()
    changed[:, t + 1:] = torch.randint(3, 50, changed[:, t + 1:].shape)
    with torch.no_grad():
        a = net(img, prompt, pmask, tgt)[1]
        b = net(img, prompt, pmask, changed)[1]
    assert torch.allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-5)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:], atol=1e-5)    # and later positions do see them


def test_matching_distance_sees_the_report_and_needs_both_modalities():
    torch.manual_seed(0)
    net = get_model("vl_fusion", fusion="cross", **SMALL).eval()
    img, prompt, pmask, tgt = _batch()
    with torch.no_grad():
        v = net.encode_image(img)
        d1 = net.match_distance(v, tgt, torch.ones_like(tgt))
        other = tgt.clone()
        other[:, 2] = (other[:, 2] + 7) % 47 + 3                 # one word changed
        d2 = net.match_distance(v, other, torch.ones_like(other))
    assert d1.shape == (2,) and (d1 >= 0).all() and (d1 <= 2 + 1e-6).all()
    assert not torch.allclose(d1, d2)
    with pytest.raises(ValueError, match="no text features"):
        get_model("vl_fusion", fusion="visual", **SMALL).match_distance(v, tgt, torch.ones_like(tgt))


def test_cbam_reweights_channels_and_positions():
    from medops.models.vl_fusion import CBAM

    torch.manual_seed(0)
    x = torch.rand(2, 32, 8, 8)
    y = CBAM(32)(x)
    assert y.shape == x.shape and not torch.allclose(x, y) and (y <= x + 1e-6).all()   # gates in (0, 1)


def test_lstm_attention_baseline_generates():
    torch.manual_seed(0)
    net = get_model("vl_lstm_attention", **SMALL).eval()
    img, prompt, pmask, tgt = _batch()
    tri, logits = net(img, prompt, pmask, tgt)
    assert tri.shape == (2, 3) and logits.shape == (2, tgt.shape[1] - 1, 50)
    assert len(net.generate(img, max_len=6)) == 2


def test_beam_search_is_no_worse_than_greedy():
    """Beam search keeps the sequence with the best length-normalised log-probability: with a beam of 4 it
    is never below greedy's, scored by the same model."""
    torch.manual_seed(1)
    net = get_model("vl_fusion", fusion="cross", **SMALL).eval()
    img, prompt, pmask, _ = _batch(b=1)

    def score(seq):
        ids = torch.tensor([[1] + seq + [2]])
        fused, _, _ = net.fuse(net.encode_image(img), prompt, pmask)
        lp = torch.log_softmax(net.decode(fused, ids[:, :-1]), -1)
        return lp[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum().item() / (ids.shape[1] - 1)

    with torch.no_grad():
        g = net.generate(img, prompt, pmask, max_len=8, beam=1)[0]
        b = net.generate(img, prompt, pmask, max_len=8, beam=4)[0]
        assert score(b) >= score(g) - 1e-4


def test_batched_greedy_decoding_equals_one_image_at_a_time():
    torch.manual_seed(2)
    net = get_model("vl_fusion", fusion="cross", **SMALL).eval()
    img, prompt, pmask, _ = _batch()
    with torch.no_grad():
        both = net.generate(img, prompt, pmask, max_len=10)
        one = [net.generate(img[i:i + 1], prompt[i:i + 1], pmask[i:i + 1], max_len=10)[0] for i in range(len(img))]
    assert both == one and all(len(s) <= 9 for s in both)


def test_a_bert_style_text_encoder_is_built_from_its_config():
    """The pretrained-text ablation level: the MiniLM architecture (its config.json), weights loaded by the family."""
    kw = {**SMALL, "text_config": {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
                                   "intermediate_size": 96, "max_position_embeddings": 32}}
    net = get_model("vl_fusion", fusion="cross", text_encoder="bert", **kw).eval()
    img, prompt, pmask, tgt = _batch()
    with torch.no_grad():
        d = net.match_distance(net.encode_image(img), tgt, torch.ones_like(tgt))
    assert net.text.net.config.hidden_size == 48 and torch.isfinite(d).all()


def test_a_frozen_text_encoder_is_a_deterministic_feature_extractor_computed_once_per_text():
    """A pretrained encoder used frozen (MiniLM on the CPU profiles) runs without dropout even while the model
    trains, and each distinct text's hidden states are computed once and reused — the same numbers as running
    the encoder every time. Fine-tuned, it runs every time and trains with dropout."""
    from medops.models.vl_fusion.net import TextEncoder

    torch.manual_seed(0)
    cfg = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
           "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.5, "max_position_embeddings": 16}
    enc = TextEncoder("bert", 8, 50, 16, cfg)
    ids = torch.randint(3, 50, (4, 6))
    ids[1] = ids[0]                                   # the same text twice in one batch
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    calls = []
    enc.net.register_forward_hook(lambda m, a, o: calls.append(len(a[0]) if a else 0))
    for p in enc.net.parameters():
        p.requires_grad_(False)
    enc.train()
    assert not enc.net.training and enc.proj.training
    first = enc(ids, mask)
    with torch.no_grad():
        direct = enc.proj(enc.net(input_ids=ids, attention_mask=mask).last_hidden_state)
    real = mask.bool()
    assert torch.allclose(first[real], direct[real], atol=1e-5)       # the text's tokens: a fresh pass's states
    assert torch.allclose(first[2, 4:], enc.proj.bias.expand(2, -1))  # padded positions: zero states
    n = len(calls)
    again = enc(ids[[3, 0, 2]], mask[[3, 0, 2]])
    assert len(calls) == n and torch.allclose(again, first[[3, 0, 2]], atol=1e-6)   # reused, not recomputed
    # the same text padded further in another batch is the same entry, with the same states
    wide = torch.cat([ids[[2]], torch.zeros(1, 3, dtype=ids.dtype)], 1)
    wide_mask = torch.cat([mask[[2]], torch.zeros(1, 3, dtype=mask.dtype)], 1)
    assert torch.equal(enc(wide, wide_mask)[0, :6], first[2]) and len(calls) == n
    first.sum().backward()                            # the projection still trains
    assert enc.proj.weight.grad is not None
    for p in enc.net.parameters():
        p.requires_grad_(True)
    enc.train()
    assert enc.net.training
    a, b = enc(ids, mask), enc(ids, mask)
    assert not torch.allclose(a, b)                   # fine-tuned: dropout on, computed every time


def test_a_frozen_encoders_features_are_kept_on_disk_for_the_next_run_and_a_bad_shard_is_only_skipped(tmp_path,
                                                                                                   caplog):
    """The next run with the same frozen weights (an ablation's other seeds) reads each text's features from the
    store instead of running the encoder — the same numbers; other weights use another folder; a damaged shard
    is skipped with a warning and its texts recomputed; a trainable encoder keeps no store."""
    from medops.families.vl_fusion.text import FeatureStore
    from medops.models.vl_fusion.net import TextEncoder

    cfg = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
           "max_position_embeddings": 16}

    def encoder(seed):
        torch.manual_seed(seed)
        enc = TextEncoder("bert", 8, 50, 16, cfg)
        for p in enc.net.parameters():
            p.requires_grad_(False)
        return enc

    ids = torch.randint(3, 50, (5, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    first = encoder(0)
    assert FeatureStore(tmp_path).attach(first) == 0
    out1 = first(ids, mask)
    assert first.flush() == 5 and first.flush() == 0
    shards = list(tmp_path.glob("*/*.safetensors"))
    assert len(shards) == 1 and shards[0].parent.name == first.weights_digest()[:32]

    second = encoder(0)
    second.proj.load_state_dict(first.proj.state_dict())
    assert FeatureStore(tmp_path).attach(second) == 5
    calls = []
    second.net.register_forward_hook(lambda m, a, o: calls.append(1))
    assert torch.equal(second(ids, mask), out1) and not calls            # read, not recomputed
    second(ids[:2] % 7 + 3, mask[:2])
    assert calls and second.flush() == 2                                  # new texts: computed and stored

    assert FeatureStore(tmp_path).attach(encoder(1)) == 0           # other weights: their own folder
    shards[0].write_bytes(b"not a safetensors file")
    third = encoder(0)
    with caplog.at_level("WARNING"):
        assert FeatureStore(tmp_path).attach(third) == 2
    assert "unreadable" in caplog.text
    with torch.no_grad():
        direct = third.proj(encoder(0).net.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert torch.allclose(third(ids, mask)[mask.bool()], direct[mask.bool()], atol=1e-5)   # lost texts recomputed

    trainable = TextEncoder("bert", 8, 50, 16, cfg)
    assert FeatureStore(tmp_path / "t").attach(trainable) == 0
    trainable(ids, mask)
    assert trainable.flush() == 0 and not (tmp_path / "t").exists()
