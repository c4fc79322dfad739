"""Are DVC's stage dependencies honest? Compare the medops modules each stage's command actually imported
(``MEDOPS_IMPORTS_LOG``, written by the CLI at exit) with that stage's ``deps`` in dvc.yaml.

A stage must depend on every module its command imported, except the registration modules of *other*
families (``families/<other>/`` and ``models/<other>/``): every command imports all families to read
params.yaml, but only the stage's own family's code runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def pipeline_files(root: Path) -> list[Path]:
    """The project's dvc.yaml and each family package's own (src/medops/families/<family>/dvc.yaml)."""
    return [root / "dvc.yaml", *sorted((root / "src/medops/families").glob("*/dvc.yaml"))]


def stage_specs(root: Path) -> dict[str, dict]:
    """Every stage of every pipeline file, keyed as `dvc repro` takes it (`name` at the root, else `file:name`)."""
    out = {}
    for f in pipeline_files(root):
        prefix = "" if f == root / "dvc.yaml" else f.relative_to(root).as_posix() + ":"
        for name, st in yaml.safe_load(f.read_text())["stages"].items():
            out[prefix + name] = st
    return out


def stage_commands(root: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """Rendered command -> [(stage name, deps)], expanding `matrix` stages with params.yaml values."""
    spec = stage_specs(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    out: dict[str, list] = {}

    def lookup(expr: str):
        node = params
        for k in expr.split("."):
            node = node[k]
        return node

    def render(s: str, item: dict) -> str:
        for k, v in item.items():
            s = s.replace("${item.%s}" % k, str(v))
        while "${" in s:
            a = s.index("${")
            b = s.index("}", a)
            s = s[:a] + str(lookup(s[a + 2:b])) + s[b + 1:]
        return s

    # an inputs stage (`medops inputs`) stands for the code its single output's readers share: a stage that
    # depends on that output depends on the inputs stage's deps
    shared = {(next(iter(o)) if isinstance(o, dict) else o): st.get("deps", [])
              for st in spec.values() if st["cmd"].startswith("medops inputs ") for o in st.get("outs", [])}
    for name, st in spec.items():
        items = [{}]
        for key, values in (st.get("matrix") or {}).items():
            vals = lookup(values[2:-1]) if isinstance(values, str) else values
            items = [{**it, key: v} for it in items for v in vals]
        for it in items:
            cmd = render(st["cmd"], it)
            deps = [render(d, it) for d in st.get("deps", [])]
            deps += [x for d in deps for x in shared.get(d, [])]
            out.setdefault(cmd, []).append((name, deps))
    return out


def family_of_command(argv: list[str], root: Path) -> str:
    from medops.config import load_config
    from medops.families import family_of_dataset

    if argv[0] in ("generate",):
        dataset = argv[1]
    elif argv[0] in ("validate", "preprocess"):
        dataset = argv[argv.index("--dataset") + 1]
    else:
        return argv[1]
    return family_of_dataset(load_config(root / "params.yaml"), dataset).name


def uncovered(root: Path, log: Path, src_root: Path) -> list[str]:
    """One line per (stage, module) the stage imported but does not depend on."""
    cmds = stage_commands(root)
    families = {p.name for p in (src_root / "src/medops/families").iterdir() if (p / "__init__.py").exists()}
    problems = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        cmd = "medops " + " ".join(rec["argv"])
        if cmd not in cmds:
            continue  # a command run by hand, not by a stage
        fam = family_of_command(rec["argv"], root)
        for stage, deps in cmds[cmd]:
            for mod in rec["modules"]:
                rel = Path(mod).resolve().relative_to(src_root.resolve()).as_posix()
                parts = rel.split("/")
                if len(parts) > 3 and parts[2] in ("families", "models") and parts[3] in families - {fam}:
                    continue
                if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps):
                    problems.append(f"{stage}: imports {rel}, not in its deps")
    return sorted(set(problems))
