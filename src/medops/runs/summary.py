"""What a person reads after a run: one family's results on the terminal (:func:`show_text`, used by
``medops show`` and ``medops run``) and the summary page of every family, ``reports/index.html``
(:func:`write_summary`, ``medops summary``): static HTML with relative links (it opens from the file system),
rendered from ``templates/index.html.j2`` with Jinja2. Per family: the run's status and time, each dataset's
contact sheet and validation summary (with a link to its Great Expectations Data Docs), the test table, the
paper-shaped ablation report with its figures and claims, the main model's figures, and the promotion
decision with the champion's model card. A figure a report links to that is not there is named on the
page instead of showing as a broken image; a family whose stage failed shows the failure and its reason.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from medops import layout

REPORTS = Path("reports")
RUN_FILE = REPORTS / "run.json"


def show_text(cfg, family: str) -> str:
    """The test table, the ablation tables with the claims, the registry decision and the MLflow UI command."""
    from medops.errors import MedopsError
    from medops.families import get_family
    from medops.tracking import ui_command

    format_table = get_family(family, cfg).format_table
    mpath = layout.report_dir(family) / "metrics.json"
    if not mpath.exists():
        raise MedopsError(str(mpath), "evaluated: no metrics yet", f"run `dvc repro` or `medops evaluate {family}`")
    m = json.loads(mpath.read_text())
    run = json.loads((layout.model_dir(family) / "run.json").read_text())
    lines = [f"test set ({m['n_test_cases']} cases, profile {cfg.profile}):", format_table(m)]
    rep = layout.ablation_report_dir(family) / "report.md"
    if rep.exists():
        lines += ["", rep.read_text().split("\n## Loss curve")[0].strip(), f"(full ablation report: {rep})"]
    dec = layout.promotion_file(family)
    if dec.exists():
        d = json.loads(dec.read_text())
        lines += ["", f"registry: {family} champion = v{d.get('champion')}  (last decision: {d['action']} "
                      f"version {d.get('version', d.get('from'))}; {'; '.join(d.get('reasons', []))})"]
    lines.append(f"MLflow UI: {ui_command('.', run)}")
    return "\n".join(lines)


# ------------------------------------------------------------------ the summary page
def _rel(path: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), page_dir.resolve())).as_posix()


def _missing(what: str, hint: str) -> str:
    return f'<span class="missing">missing: {html.escape(what)} — {html.escape(hint)}</span>'


def render_markdown(path: Path, page_dir: Path, hint: str, text: str | None = None) -> tuple[str, list[str]]:
    """``path`` (a report's markdown; ``text`` instead of its content if given) as HTML for a page in
    ``page_dir``: tables rendered, image links re-pointed relative to the page, and an image whose file is
    missing replaced by a notice naming it. Returns ``(html, missing files)``."""
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(Path(path).read_text() if text is None else text)
    missing = []
    for t in tokens:
        for i, child in enumerate(t.children or []):
            if child.type != "image":
                continue
            src = str(child.attrs.get("src", ""))
            target = Path(os.path.normpath(Path(path).parent / src)) if "://" not in src else None
            if target is not None and target.exists():
                child.attrs["src"] = _rel(target, page_dir)
            else:
                missing.append(str(target or src))
                t.children[i] = Token("html_inline", "", 0, content=_missing(str(target or src), hint))
    return md.renderer.render(tokens, md.options, {}), missing


def _metrics_table(metrics: dict) -> list[dict]:
    model, base = metrics.get("model", {}), metrics.get("baseline", {})
    return [{"metric": k, "model": v, "baseline": base.get(k)} for k, v in model.items() if isinstance(v, (int, float))]


def _datasets(cfg, family: str) -> list[str]:
    from medops.families import get_family

    listed = ((cfg.raw.get("orchestration", {}) or {}).get("datasets", {}) or {}).get(family)
    return list(listed or get_family(family, cfg).datasets)


def family_section(cfg, family: str, page_dir: Path, run: dict | None) -> dict:
    """Everything the page shows for one family, with paths relative to the page."""
    sec = {"name": family, "run": run or {}, "datasets": [], "metrics": None, "report_html": None,
           "figures": [], "promotion": None, "card_html": None, "missing": []}
    for ds in _datasets(cfg, family):
        sheet = layout.contact_sheet(ds)
        vdir = layout.validation_dir(ds)
        vsum = json.loads((vdir / "summary.json").read_text()) if (vdir / "summary.json").exists() else None
        docs = vdir / "data_docs" / "index.html"
        d = {"name": ds, "sheet": _rel(sheet, page_dir) if sheet.exists() else None,
             "sheet_missing": None if sheet.exists() else _missing(str(sheet), f"`medops generate {ds}` draws it"),
             "validation": vsum, "data_docs": _rel(docs, page_dir) if docs.exists() else None}
        if not sheet.exists() and ds in set(cfg.raw.get("orchestration", {}).get("simulated", []) or []):
            sec["missing"].append(str(sheet))
        sec["datasets"].append(d)
    mpath = layout.report_dir(family) / "metrics.json"
    if mpath.exists():
        m = json.loads(mpath.read_text())
        sec["metrics"] = {"n": m.get("n_test_cases"), "rows": _metrics_table(m),
                          "baseline": m.get("baseline_best") or (m.get("baseline") or {}).get("name", "baseline")}
    figs = layout.report_dir(family) / "figures"
    sec["figures"] = [{"src": _rel(f, page_dir), "name": f.stem} for f in sorted(figs.glob("*.png"))] if figs.exists() else []
    rep = layout.ablation_report_dir(family) / "report.md"
    if rep.exists():
        sec["report_html"], miss = render_markdown(rep, page_dir, f"`medops report {family}` draws it")
        sec["missing"] += miss
    dec = layout.promotion_file(family)
    if dec.exists():
        sec["promotion"] = json.loads(dec.read_text())
    card = dec.with_name(f"{family}_model_card.md")
    if card.exists():
        head, _, rest = card.read_text().partition("\n## Ablation (from `medops report`)")
        head += rest[rest.find("\n## Known limitations"):] if "\n## Known limitations" in rest else ""  # not twice
        sec["card_html"], miss = render_markdown(card, page_dir, f"`medops promote {family}` writes it", head)
        sec["missing"] += miss
    return sec


def write_summary(cfg, out: Path = REPORTS / "index.html") -> Path:
    """Write the summary page of every family in ``orchestration.families`` (in the order of the last
    ``medops run``, whose statuses and times it shows)."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = json.loads(RUN_FILE.read_text()) if RUN_FILE.exists() else {}
    ran = list((run.get("families") or {}))
    families = ran + [f for f in (cfg.raw.get("orchestration", {}) or {}).get("families", []) if f not in ran]
    sections = [family_section(cfg, f, out.parent, (run.get("families") or {}).get(f)) for f in families]
    for s in sections:
        s["report_html"] = Markup(s["report_html"]) if s["report_html"] else None
        s["card_html"] = Markup(s["card_html"]) if s["card_html"] else None
        for d in s["datasets"]:
            d["sheet_missing"] = Markup(d["sheet_missing"]) if d["sheet_missing"] else None
    env = Environment(loader=PackageLoader("medops", "templates"), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("index.html.j2").render(
        sections=sections, run=run, profile=cfg.profile,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    tmp = out.with_suffix(".html.partial")
    tmp.write_text(page)
    tmp.replace(out)
    return out
