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
    with pytest.raises(Exception):
        cfg.generate.n_cases = 3


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
