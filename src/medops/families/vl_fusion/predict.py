"""`medops predict` for vl_fusion: radiographs (PNG or DICOM) -> a generated report, triage probabilities, a
matching score against a supplied report, and the cross-attention map as a figure.

Input: one image, or a folder of images; a ``reports.csv`` (``case_id, report``) in the folder supplies a
report per image to check against its image (the case id is the file name without its suffix). The model
is the registered one (rebuilt by name from safetensors after a digest check); its tokenizer is the JSON
logged with its training run, checked against the SHA-256 recorded then."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from medops.data.cxr_sim import TRIAGE
from medops.data.io import file_sha256
from medops.errors import DataError
from medops.layout import file_in

SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def _inputs(inp: Path) -> tuple[list[Path], dict]:
    from medops.families.vl_fusion.data import read_reports

    if inp.is_file():
        return [inp], {}
    files = sorted(p for p in inp.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES)) if inp.is_dir() else []
    if not files:
        raise DataError(str(inp), "predict_input: no radiograph found", f"pass an image or a folder of images ({', '.join(SUFFIXES)})")
    supplied = {}
    if (inp / "reports.csv").exists():
        reps = read_reports(inp / "reports.csv")
        supplied = dict(zip(reps.case_id.astype(str), reps.report))
        unknown = sorted(set(supplied) - {f.name.split(".")[0] for f in files})
        if unknown:
            raise DataError(str(inp / "reports.csv"), f"report(s) for no image in the folder: {unknown[:3]}",
                            "name each report's case_id after its image file (without the suffix)")
    return files, supplied


def _tokenizer(ref):
    from medops.families.vl_fusion import text

    with tempfile.TemporaryDirectory(prefix="medops-tok-") as tmp:
        local = ref.download("tokenizer", Path(tmp)) / "tokenizer.json"
        want = ref.tags.get("tokenizer_sha256")
        if not want or file_sha256(local) != want:
            raise DataError(f"{ref.uri} tokenizer/tokenizer.json", "model_integrity: the tokenizer differs from the "
                            "one recorded when the model was trained", "re-register the model from its run")
        return text.load_tokenizer(local)


def predict_reports(ref, inp: Path, out: Path, default_pre) -> list[dict]:
    """Every input is read and checked before anything is predicted or written."""
    import torch

    from medops.config import from_logged_params
    from medops.families.vl_fusion import text
    from medops.families.vl_fusion.evaluation import attention_figure, attention_maps
    from medops.preprocess.classification_2d import preprocess_image, read_stacks

    files, supplied = _inputs(Path(inp))
    stacks = read_stacks(files, "radiograph")   # every file read and checked before anything is written
    pcfg = from_logged_params(ref.params, default_pre, "preprocess_vl")
    beam = int(ref.params.get("vl_fusion.evaluate.beam", 3))
    tok = _tokenizer(ref)
    enc_tok = text.load_encoder_tokenizer() if ref.tags.get("text_encoder_tokenizer") == "minilm" else None
    model = ref.load()
    net = model[0]
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for f, stack in zip(files, stacks):
        case = f.name.split(".")[0]
        img, _, _ = preprocess_image(stack, None, pcfg)
        x = torch.from_numpy(img[None]).float()
        with torch.no_grad():
            prob = model(x)[0].numpy()
            report = text.decode(tok, net.generate(x, max_len=pcfg.max_len, beam=beam)[0])
        summary = {"case_id": case, "input": str(f), "model_uri": ref.uri, "model_version": ref.version,
                   "run_id": ref.run_id, "report": report, "triage": {c: float(p) for c, p in zip(TRIAGE, prob)},
                   "predicted_triage": TRIAGE[int(prob.argmax())], "beam": beam, "match_score": None,
                   "attention_png": None}
        words = [report]
        encode = (lambda t: text.encode(tok, t, pcfg.max_len)) if enc_tok is None else \
            (lambda t: text.encode_for_encoder(enc_tok, t, pcfg.max_len))
        if case in supplied:
            enc = encode([supplied[case]])
            ids, mask = torch.tensor(enc.ids), torch.tensor(enc.mask)
            summary.update(supplied_report=supplied[case], supplied_unknown_tokens=enc.unknown,
                           supplied_truncated=bool(enc.truncated))
            if getattr(net, "fusion", "") in ("cross", "concat", "early"):
                with torch.no_grad():
                    d = float(net.match_distance(net.encode_image(x), ids, mask)[0])
                summary["match_score"] = -d           # higher: the report fits the image better (−D of Eq. 2)
            words = [supplied[case]]
        else:
            enc = encode(words)
            ids, mask = torch.tensor(enc.ids), torch.tensor(enc.mask)
        maps = attention_maps(net, x, ids, mask)
        if maps is not None:
            png = file_in(out, case, "_attention.png", "image name")
            attention_figure([img[0]], maps, [f"{case}: {words[0]}"], png,
                             suptitle="where the report's words look (text-to-image cross-attention)")
            summary["attention_png"] = png.name
        file_in(out, case, ".json", "image name").write_text(json.dumps(summary, indent=2))
        results.append(summary)
    return results
