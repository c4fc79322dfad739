import dataclasses

import pytest

from medops.config import load_config
from medops.errors import ConfigError
from conftest import ROOT


def test_profiles_resolve_paper_numbers():
    paper = load_config(ROOT / "params.yaml", profile="paper")
    t = paper.family("fusion_seg").train
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.loss) == ("adam", 1e-4, 8, 100, "dice_bce")
    assert paper.preprocess.image_size == 256 and paper.generate.n_cases == 1200
    assert (paper.generate.us_size, paper.generate.mg_size, paper.generate.mri_size) == (256, 512, 256)
    smoke = load_config(ROOT / "params.yaml", profile="smoke")
    assert smoke.generate.n_cases < paper.generate.n_cases


def test_config_is_frozen():
    cfg = load_config(ROOT / "params.yaml", profile="smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.generate.n_cases = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.family("fusion_seg").train.lr = 1.0


def test_unknown_key_names_the_section(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profile: smoke\ngenerate:\n  n_casez: 3\n")
    with pytest.raises(ConfigError, match=r"generate.*n_casez"):
        load_config(p)


def test_unknown_profile(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profile: huge\n")
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config(p)


def test_missing_profile_value(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profile: paper\ngenerate:\n  n_cases: {smoke: 3, quick: 5}\n")
    with pytest.raises(ConfigError, match="no value for profile 'paper'"):
        load_config(p)


@pytest.mark.parametrize("section, key", [
    ("pre_process", None),                       # a misspelt top-level key
    ("fusion_seg", "modle"),                     # a misspelt family sub-section
    ("transfer_cls", "model.backbon"),           # a misspelt field deep inside a family
    ("ablation", "fusion_segg"),                 # an ablation of an unknown family
])
def test_a_typo_anywhere_fails_with_its_path_and_the_valid_keys(tmp_path, section, key):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if key is None:
        params[section] = {"image_size": 64}
    elif section == "ablation":
        params[section][key] = params[section]["fusion_seg"]
    else:
        node = params[section]
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = 1
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert (key or section).split(".")[-1] in msg and ("use only" in msg or "use one of" in msg)


def test_family_sections_come_from_the_registered_families():
    from medops.families import get_family, list_families

    cfg = load_config(ROOT / "params.yaml", profile="smoke")
    for name in list_families():
        assert isinstance(cfg.family(name), get_family(name).config_class)
        for sec, dc in get_family(name).sections.items():
            assert isinstance(cfg.section(sec), dc)


@pytest.mark.parametrize("kind", ["cells", "factors"])
def test_cell_and_factor_names_that_would_escape_their_folder_are_refused(tmp_path, kind):
    """Cell names become models/<family>/cells/<cell>/ and factor names reports/ablation/<family>/table_<factor>.csv."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    abl = params["ablation"]["fusion_seg"]
    if kind == "cells":
        abl["cells"]["../../escape"] = {}
    else:
        abl["factors"]["../x"] = ["a"]
        abl["baseline"]["../x"] = "a"
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="safe_identifier"):
        load_config(p)
