"""`vl_fusion` (paper 003): cross-attention vision-language fusion, applied to chest radiographs and reports.

The paper's model (its section 3, Figure 2): a DenseNet121 trunk with CBAM gives image tokens, ALBERT gives
text tokens, multi-head cross-attention runs in both directions (image queries over text, text queries over
image), the two attended streams are concatenated and a linear layer fuses them; task heads read the fused
tokens — classification (Eq. 1), image-text matching with a contrastive loss (Eq. 2), captioning with a
sequence cross-entropy (Eq. 3).

Where the text is silent, this is what was chosen (also in the README):

* **Concatenation.** The attended image tokens (n) and text tokens (t) are concatenated along the token axis
  (the streams have different lengths) and a linear layer maps each fused token: ``Y = W [I'; T'] + b``.
* **Which text the generation and triage paths see.** Eq. 3 conditions word t on the words before it and the
  image only. Feeding the report itself to the text encoder would let the fused tokens carry the words to be
  predicted, so generation and triage fuse the image with a fixed *prompt* (``model.prompt``, e.g. "PA chest
  radiograph") and a causal Transformer decoder attends to those fused tokens while seeing only the prefix
  generated so far (tested: its output at step t does not change when later tokens change). Matching fuses
  the image with the candidate report.
* **Matching features.** f(I) and g(T) of Eq. 2 are the pooled image and text halves of the fused tokens of
  the pair, projected and L2-normalised; D is their Euclidean distance; the matching score is −D. The pair
  is scored jointly (a cross-encoder), so a hard negative that changes one word changes both features.
* **Text encoder.** ALBERT with a config from params and random initialisation (no pretrained ALBERT exists
  offline), or ``bert``: the architecture of the pretrained MiniLM shipped offline, whose weights the family
  loads (a model module reads no files).
* **CBAM** (Woo et al., ECCV 2018): channel attention from average- and max-pooled descriptors through a
  shared MLP (reduction 16), then spatial attention from a 7×7 convolution of the channel-wise mean and max.
  Neither MONAI nor torchvision ships it; it is the module the paper names.

Variants (the ablation's ``fusion`` levels, paper Table 3 and the baselines of Tables 1-2):
``cross`` (the paper), ``concat`` (cross-attention removed: pooled image and text features concatenated
and fused by a linear layer into one token), ``visual`` (image tokens only), ``text`` (no image: the
decoder is a language model on the prefix alone), ``early`` (one Transformer encoder over the concatenated
image and text tokens, standing in for M4C); ``use_cbam`` off removes CBAM. :class:`LSTMAttention` is the
soft-attention LSTM captioner (Show, Attend and Tell) of the paper's baselines.
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medops.models.registry import register_model

log = logging.getLogger(__name__)

FUSIONS = ("cross", "concat", "visual", "text", "early")
N_TRIAGE = 3


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel then spatial attention (Woo et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ca = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * ca
        sa = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * sa


class ImageEncoder(nn.Module):
    """torchvision DenseNet trunk (DenseNet121 = block_config (6, 12, 24, 16)) -> optional CBAM -> tokens."""

    def __init__(self, width: int, image_size: int, block_config=(6, 12, 24, 16), growth_rate: int = 32,
                 init_features: int = 64, use_cbam: bool = True):
        super().__init__()
        from torchvision.models import DenseNet

        trunk = DenseNet(growth_rate=growth_rate, block_config=tuple(block_config), num_init_features=init_features)
        self.features = trunk.features
        channels = trunk.classifier.in_features
        self.cbam = CBAM(channels) if use_cbam else nn.Identity()
        self.proj = nn.Conv2d(channels, width, 1)
        side = max(image_size // 32, 1)
        self.pos = nn.Parameter(torch.zeros(1, side * side, width))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == 1:                       # a radiograph is one channel; the trunk takes three
            image = image.expand(-1, 3, -1, -1)
        x = self.cbam(F.relu(self.features(image)))
        tokens = self.proj(x).flatten(2).transpose(1, 2)          # (B, h*w, width)
        if tokens.shape[1] == self.pos.shape[1]:
            tokens = tokens + self.pos
        return tokens


class TextEncoder(nn.Module):
    """ALBERT (transformers, random initialisation, config from params) or a BERT-style encoder (the MiniLM
    that ships offline: its family loads the pretrained weights into ``net``), projected to the fusion width."""

    def __init__(self, kind: str, width: int, vocab_size: int, max_len: int, config: dict | None = None,
                 pad_id: int = 0):
        super().__init__()
        self.kind = kind
        if kind == "albert":
            from transformers import AlbertConfig, AlbertModel

            a = {"embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 256, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                 **(config or {})}
            self.net = AlbertModel(AlbertConfig(vocab_size=vocab_size, max_position_embeddings=max(max_len, 8),
                                                pad_token_id=pad_id, **a), add_pooling_layer=False)
        elif kind == "bert":
            from transformers import BertConfig, BertModel

            c = {k: v for k, v in (config or {}).items() if k not in ("architectures", "model_type", "transformers_version")}
            c.setdefault("vocab_size", vocab_size)
            self.net = BertModel(BertConfig(**c), add_pooling_layer=False)
        else:
            raise ValueError(f"text encoder {kind!r}: use albert | bert")
        self.proj = nn.Linear(self.net.config.hidden_size, width)
        self._features: dict = {}       # frozen encoder: its output per text (a pure function of the ids)
        self.sink = None                 # frozen: a callable that keeps new features beyond this process
        self._pending: dict = {}         # computed here, not yet handed to the sink

    @property
    def frozen(self) -> bool:
        """No encoder weight trains (a pretrained encoder used as a feature extractor): it then runs in eval
        mode (no dropout) and each text's hidden states are computed once and reused, since they cannot change."""
        return not any(p.requires_grad for p in self.net.parameters())

    def weights_digest(self) -> str:
        """SHA-256 of the encoder's weights (names, shapes, dtypes and values): what its features depend on."""
        h = hashlib.sha256()
        for name, t in sorted(self.net.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def preload(self, features: dict) -> int:
        """Features of texts computed before (by a run with the same weights: the family's store, see
        ``families/vl_fusion/text.py``), keyed as :meth:`forward` keys them; an entry of the wrong shape is
        skipped. Returns how many were new. A trainable encoder takes none (its features change every step)."""
        if not self.frozen:
            return 0
        hidden, n = int(self.net.config.hidden_size), 0
        for k, t in features.items():
            if torch.is_tensor(t) and t.dim() == 2 and t.shape[1] == hidden and t.is_floating_point():
                n += k not in self._features
                self._features.setdefault(k, t)
            else:
                log.warning("text features: entry %s of shape %s is not (length, %d); skipped", str(k)[:12],
                            tuple(getattr(t, "shape", ())), hidden)
        return n

    def flush(self) -> int:
        """Hand the features computed since the last flush to ``sink`` (the family's store writes them);
        returns how many. Without a sink nothing is kept beyond this process."""
        if self.sink is None or not self._pending:
            self._pending.clear()
            return 0
        pending, self._pending = self._pending, {}
        self.sink(pending)
        return len(pending)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.net.eval()
            if len(self._pending) >= 64:     # between training and validation: a shard per phase, not per batch
                self.flush()
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            self._features.clear()
            self._pending.clear()
            return self.proj(self.net(input_ids=ids, attention_mask=mask).last_hidden_state)
        if self.net.training:
            self.net.eval()
        # A frozen encoder's features of a text are its hidden states at the text's own tokens, computed
        # without the batch's padding (the attention mask gives padded keys zero weight, so the real tokens'
        # states do not depend on it), and zeros at padded positions: one entry per text, whatever the batch
        # pads to. A mask that is not right-padding keys the whole padded row instead.
        n = mask.sum(1).tolist()
        a_ids, a_mask = ids.cpu().numpy(), mask.cpu().numpy()
        keys, lens = [], []
        for i, L in enumerate(n):
            L = int(L)
            if a_mask[i, :L].all() and not a_mask[i, L:].any():
                keys.append("t:" + hashlib.sha256(a_ids[i, :L].tobytes()).hexdigest())
                lens.append(L)
            else:
                keys.append("m:" + hashlib.sha256(a_ids[i].tobytes() + b"|" + a_mask[i].tobytes()).hexdigest())
                lens.append(None)
        todo = list({k: i for i, k in enumerate(keys) if k not in self._features}.values())
        if todo:
            cut = max(1, max(mask.shape[1] if lens[i] is None else lens[i] for i in todo))
            with torch.no_grad():
                out = self.net(input_ids=ids[todo, :cut], attention_mask=mask[todo, :cut]).last_hidden_state
            for j, i in enumerate(todo):
                if keys[i] not in self._features:
                    self._features[keys[i]] = out[j, :cut if lens[i] is None else lens[i]].clone()
                    if self.sink is not None:
                        self._pending[keys[i]] = self._features[keys[i]]
            if len(self._pending) >= 1024:
                self.flush()
        hidden = torch.zeros(ids.shape[0], ids.shape[1], int(self.net.config.hidden_size), device=ids.device)
        for i, k in enumerate(keys):
            f = self._features[k]
            hidden[i, :f.shape[0]] = f.to(ids.device, hidden.dtype)
        return self.proj(hidden)


class CrossAttentionLayer(nn.Module):
    """One bidirectional layer: image tokens attend to text tokens and text tokens to image tokens (both from
    the layer's inputs), each with a residual, LayerNorm and a feed-forward block."""

    def __init__(self, width: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.i2t = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.t2i = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_i, self.norm_t = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ff_i = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        self.ff_t = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        self.norm_i2, self.norm_t2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, img, txt, txt_pad):
        a_i, _ = self.i2t(img, txt, txt, key_padding_mask=txt_pad, need_weights=False)
        a_t, w_t = self.t2i(txt, img, img, need_weights=True)      # (B, t, n): where each word looks
        img = self.norm_i(img + a_i)
        txt = self.norm_t(txt + a_t)
        return self.norm_i2(img + self.ff_i(img)), self.norm_t2(txt + self.ff_t(txt)), w_t


def _pool(x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    if pad is None:
        return x.mean(1)
    keep = (~pad).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def _prompt_buffer(net: nn.Module, prompt_len: int) -> None:
    """The fixed prompt's token ids, stored with the weights (a registered model is served from the image
    alone); the family writes them once the tokenizer exists (:meth:`set_prompt`)."""
    net.register_buffer("prompt", torch.zeros(prompt_len, dtype=torch.long))


class _Prompted:
    def set_prompt(self, ids) -> None:
        """Store the prompt's token ids (padded or cut to the buffer's length) with the weights."""
        ids = torch.as_tensor(list(ids), dtype=torch.long)[:self.prompt.numel()]
        self.prompt.zero_()
        self.prompt[:len(ids)] = ids


def _prompt(net, image, ids, mask):
    if ids is not None:
        return ids, mask
    ids = net.prompt.to(image.device).expand(image.shape[0], -1)
    return ids, (ids != net.pad_id).long()


class VLFusion(_Prompted, nn.Module):
    """The family's model; :meth:`fuse` gives the fused tokens of (image, text), the heads read them."""

    def __init__(self, vocab_size: int, *, image_size: int = 128, width: int = 128, heads: int = 4,
                 cross_layers: int = 1, decoder_layers: int = 2, fusion: str = "cross", use_cbam: bool = True,
                 text_encoder: str = "albert", text_config: dict | None = None, max_len: int = 64,
                 block_config=(6, 12, 24, 16), growth_rate: int = 32, init_features: int = 64,
                 embed_dim: int = 64, dropout: float = 0.1, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 prompt_len: int = 8):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: use one of {FUSIONS}")
        self.fusion, self.max_len = fusion, max_len
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        if fusion != "text":
            self.image = ImageEncoder(width, image_size, block_config, growth_rate, init_features, use_cbam)
        if fusion != "visual":
            self.text = TextEncoder(text_encoder, width, vocab_size, max_len, text_config, pad_id)
        if fusion == "cross":
            self.cross = nn.ModuleList(CrossAttentionLayer(width, heads, dropout) for _ in range(cross_layers))
            self.fuse_linear = nn.Linear(width, width)
        elif fusion == "concat":
            self.fuse_linear = nn.Linear(2 * width, width)
        elif fusion == "early":
            self.modality = nn.Parameter(torch.zeros(2, width))
            layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
            self.early = nn.TransformerEncoder(layer, max(cross_layers, 1), enable_nested_tensor=False)
        elif fusion == "text":
            self.memory = nn.Parameter(torch.zeros(1, 1, width))
        self.triage = nn.Linear(width, N_TRIAGE)
        self.match_i = nn.Linear(width, embed_dim)
        self.match_t = nn.Linear(width, embed_dim)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, width)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_layers)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=width ** -0.5)   # tied: N(0, 1) would give logits of std sqrt(width)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.lm_head.weight = self.embed.weight              # tied input/output embeddings
        self.last_attention = None
        _prompt_buffer(self, prompt_len)

    # ------------------------------------------------------------------ fusion
    def encode_image(self, image: torch.Tensor) -> torch.Tensor | None:
        return self.image(image) if self.fusion != "text" else None

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """Text tokens (independent of the image: computed once, reused for every image it is paired with)."""
        return self.text(ids, mask) if self.fusion != "visual" else None

    def fuse(self, img: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor, txt: torch.Tensor | None = None):
        """Fused tokens of (image tokens, text) and the (pooled image, pooled text) halves for matching;
        ``txt``: the text's tokens from :meth:`encode_text` when already computed."""
        pad = mask == 0
        if self.fusion == "text":
            txt = self.text(ids, mask) if txt is None else txt
            return self.memory.expand(ids.shape[0], -1, -1), None, _pool(txt, pad)
        if self.fusion == "visual":
            return img, _pool(img), None
        txt = self.text(ids, mask) if txt is None else txt
        if self.fusion == "cross":
            for layer in self.cross:
                img, txt, self.last_attention = layer(img, txt, pad)
            fused = self.fuse_linear(torch.cat([img, txt], 1))
            return fused, _pool(fused[:, :img.shape[1]]), _pool(fused[:, img.shape[1]:], pad)
        if self.fusion == "concat":
            pi, pt = _pool(img), _pool(txt, pad)
            fused = self.fuse_linear(torch.cat([pi, pt], -1)).unsqueeze(1)
            return fused, pi, pt
        x = torch.cat([img + self.modality[0], txt + self.modality[1]], 1)     # early fusion (M4C stand-in)
        pad_all = torch.cat([torch.zeros(img.shape[:2], dtype=torch.bool, device=img.device), pad], 1)
        x = self.early(x, src_key_padding_mask=pad_all)
        return x, _pool(x[:, :img.shape[1]]), _pool(x[:, img.shape[1]:], pad)

    # ------------------------------------------------------------------ heads
    def triage_logits(self, fused: torch.Tensor) -> torch.Tensor:
        return self.triage(fused.mean(1))                                     # Eq. 1's classifier

    def match_distance(self, img: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor,
                       txt: torch.Tensor | None = None) -> torch.Tensor:
        """D(f(I), g(T)) of Eq. 2 for each (image, text) pair of the batch (L2-normalised features)."""
        _, pi, pt = self.fuse(img, ids, mask, txt)
        if pi is None or pt is None:
            raise ValueError(f"fusion {self.fusion!r} has no {'image' if pi is None else 'text'} features to match")
        f = F.normalize(self.match_i(pi), dim=-1)
        g = F.normalize(self.match_t(pt), dim=-1)
        return (f - g).norm(dim=-1)

    def decode(self, memory: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Next-word logits at every position of ``prefix`` (B, t): position k sees tokens 0..k only."""
        t = prefix.shape[1]
        if t > self.max_len:
            raise ValueError(f"prefix of {t} tokens exceeds max_len {self.max_len}")
        x = self.embed(prefix) + self.pos(torch.arange(t, device=prefix.device))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=prefix.device), 1)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=prefix == self.pad_id)
        return self.lm_head(h)

    def forward(self, image, prompt_ids=None, prompt_mask=None, target_ids=None):
        """Teacher forcing: triage logits and next-word logits for ``target_ids`` (BOS ... EOS, padded). With
        the image alone (a served model): the triage logits, with the stored prompt."""
        prompt_ids, prompt_mask = _prompt(self, image, prompt_ids, prompt_mask)
        fused, _, _ = self.fuse(self.encode_image(image), prompt_ids, prompt_mask)
        if target_ids is None:
            return self.triage_logits(fused)
        return self.triage_logits(fused), self.decode(fused, target_ids[:, :-1])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, image, prompt_ids=None, prompt_mask=None, *, max_len: int | None = None, beam: int = 1,
                 length_penalty: float = 1.0) -> list[list[int]]:
        """Greedy (``beam`` 1) or beam-search report tokens per image (BOS/EOS stripped)."""
        max_len = min(max_len or self.max_len, self.max_len)
        prompt_ids, prompt_mask = _prompt(self, image, prompt_ids, prompt_mask)
        fused, _, _ = self.fuse(self.encode_image(image), prompt_ids, prompt_mask)
        if beam == 1:
            return self._greedy(fused, max_len)
        return [self._beam(fused[i:i + 1], max_len, beam, length_penalty) for i in range(fused.shape[0])]

    def _greedy(self, memory, max_len: int) -> list[list[int]]:
        """The most probable next word at every step, the whole batch at once (a finished report pads)."""
        n = memory.shape[0]
        seqs = torch.full((n, 1), self.bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(n, dtype=torch.bool, device=memory.device)
        for _ in range(max_len - 1):
            logits = self.decode(memory, seqs)[:, -1].float()
            logits[:, [self.pad_id, self.bos_id]] = -math.inf
            nxt = logits.argmax(-1).masked_fill(done, self.pad_id)
            seqs = torch.cat([seqs, nxt[:, None]], 1)
            done |= nxt == self.eos_id
            if bool(done.all()):
                break
        out = []
        for s in seqs[:, 1:].tolist():
            s = [w for w in s if w != self.pad_id]
            out.append(s[:s.index(self.eos_id)] if self.eos_id in s else s)
        return out

    def _beam(self, memory, max_len: int, k: int, alpha: float) -> list[int]:
        beams = [([self.bos_id], 0.0)]
        done: list[tuple[list[int], float]] = []
        for _ in range(max_len - 1):
            seqs = torch.tensor([b[0] for b in beams], device=memory.device)
            logp = F.log_softmax(self.decode(memory.expand(len(beams), -1, -1), seqs)[:, -1].float(), -1)
            logp[:, self.pad_id] = -math.inf
            logp[:, self.bos_id] = -math.inf
            cand = (torch.tensor([b[1] for b in beams], device=memory.device)[:, None] + logp).flatten()
            top = cand.topk(min(k * 2, cand.numel()))
            beams_next = []
            for score, flat in zip(top.values.tolist(), top.indices.tolist()):
                b, w = divmod(flat, logp.shape[1])
                seq = beams[b][0] + [w]
                if w == self.eos_id:
                    done.append((seq, score / (len(seq) - 1) ** alpha))
                else:
                    beams_next.append((seq, score))
                if len(beams_next) == k:
                    break
            beams = beams_next
            if len(done) >= k or not beams:
                break
        done += [(s, sc / (len(s) - 1) ** alpha) for s, sc in beams]
        best = max(done, key=lambda d: d[1])[0]
        return [w for w in best[1:] if w != self.eos_id]


class LSTMAttention(_Prompted, nn.Module):
    """Soft-attention LSTM captioner (Xu et al., Show, Attend and Tell, 2015): the paper's "LSTM-Attention"
    baseline. Same image encoder and interface as :class:`VLFusion` (no text encoder, no matching)."""

    def __init__(self, vocab_size: int, *, image_size: int = 128, width: int = 128, max_len: int = 64,
                 block_config=(6, 12, 24, 16), growth_rate: int = 32, init_features: int = 64, use_cbam: bool = False,
                 dropout: float = 0.1, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, prompt_len: int = 8,
                 **_ignored):
        super().__init__()
        self.fusion, self.max_len = "lstm", max_len
        _prompt_buffer(self, prompt_len)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.image = ImageEncoder(width, image_size, block_config, growth_rate, init_features, use_cbam)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.init_h, self.init_c = nn.Linear(width, width), nn.Linear(width, width)
        self.att_h, self.att_v, self.att = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 1)
        self.cell = nn.LSTMCell(2 * width, width)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, vocab_size)
        self.triage = nn.Linear(width, N_TRIAGE)

    def _step(self, v, h, c, w):
        a = torch.softmax(self.att(torch.tanh(self.att_v(v) + self.att_h(h)[:, None])).squeeze(-1), 1)
        ctx = (a.unsqueeze(-1) * v).sum(1)
        h, c = self.cell(torch.cat([self.embed(w), ctx], -1), (h, c))
        return self.out(self.drop(h)), h, c

    def decode(self, v, prefix):
        mean = v.mean(1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        outs = []
        for t in range(prefix.shape[1]):
            o, h, c = self._step(v, h, c, prefix[:, t])
            outs.append(o)
        return torch.stack(outs, 1)

    def forward(self, image, prompt_ids=None, prompt_mask=None, target_ids=None):
        v = self.image(image)
        if target_ids is None:
            return self.triage(v.mean(1))
        return self.triage(v.mean(1)), self.decode(v, target_ids[:, :-1])

    @torch.no_grad()
    def generate(self, image, prompt_ids=None, prompt_mask=None, *, max_len: int | None = None, beam: int = 1,
                 length_penalty: float = 1.0) -> list[list[int]]:
        max_len = min(max_len or self.max_len, self.max_len)
        v = self.image(image)
        seqs = torch.full((v.shape[0], 1), self.bos_id, dtype=torch.long, device=v.device)
        for _ in range(max_len - 1):       # greedy (the baseline's beam search is not implemented)
            nxt = self.decode(v, seqs)[:, -1].argmax(-1, keepdim=True)
            seqs = torch.cat([seqs, nxt], 1)
        res = []
        for s in seqs[:, 1:].tolist():
            res.append(s[:s.index(self.eos_id)] if self.eos_id in s else s)
        return res


@register_model("vl_fusion")
def vl_fusion(**kw) -> nn.Module:
    return VLFusion(**kw)


@register_model("vl_lstm_attention")
def vl_lstm_attention(**kw) -> nn.Module:
    return LSTMAttention(**kw)
