"""Tests of skysub.config: presets, TOML files, inheritance, errors."""

from __future__ import annotations

import pytest

from skysub.background.annulus import AnnulusBackground
from skysub.config import HeaderKeys, SurveyConfig, list_presets, load_config
from skysub.errors import ConfigError


def test_presets_listed_and_default_is_generic():
    assert list_presets() == ["generic", "inpaint-families", "inpaint-generic", "inpaint-mixed",
                              "inpaint-parallel", "inpaint-scanmap", "paus"]
    cfg = load_config()
    assert isinstance(cfg, SurveyConfig) and cfg.name == "generic"
    assert cfg.source == "preset:generic"


def test_paus_preset_numbers():
    cfg = load_config("paus")
    assert cfg.name == "paus"
    assert cfg.header == HeaderKeys()
    assert cfg.header.exptime == "EXPTIME" and cfg.header.band == "FILTER"
    assert cfg.annulus == {"r_in": 30.0, "r_out": 45.0, "statistic": "median", "sigma": 3.0,
                           "maxiters": 10}
    assert cfg.mesh == {"box_size": 64, "filter_size": 3}
    assert cfg.templates["central_fraction"] == 0.5 and cfg.templates["min_images"] == 3
    assert cfg.templates["per_night"] is False
    assert cfg.photometry["aperture_radius"] == 8.0
    sim = cfg.simulate
    assert sim["shape"] == [512, 1024]
    assert sim["bands"] == ["NB455", "NB685", "NB845"]
    assert sim["epochs"] == ["before", "after"]
    assert sim["sky"] == {"NB455": 60.0, "NB685": 110.0, "NB845": 150.0}
    assert sim["scattered_light"] == 0.15 and sim["rdnoise"] == 5.0
    assert cfg.bkgnet == {"stamp_size": 120, "mask_size": 16, "label_radius": 8.0}


def test_generic_preset_numbers():
    cfg = load_config("generic")
    assert cfg.annulus["r_in"] == 10.0 and cfg.annulus["r_out"] == 20.0
    assert cfg.annulus["statistic"] == "mean"
    assert cfg.photometry["aperture_radius"] == 5.0
    assert cfg.simulate["bands"] == ["r"] and cfg.simulate["epochs"] == ["default"]
    assert cfg.simulate["shape"] == [512, 512] and cfg.simulate["scattered_light"] == 0.0
    assert set(cfg.simulate["sky"]) == {"r"}


@pytest.mark.parametrize("name", ["generic", "paus"])
def test_presets_feed_the_annulus_estimator(name):
    cfg = load_config(name)
    est = AnnulusBackground.from_config(cfg.annulus)
    assert (est.r_in, est.r_out) == (cfg.annulus["r_in"], cfg.annulus["r_out"])
    assert est.statistic == cfg.annulus["statistic"]


@pytest.mark.parametrize("name", ["generic", "paus"])
def test_presets_feed_the_mesh(name):
    cfg = load_config(name)
    mesh = pytest.importorskip("skysub.background.mesh")
    est = mesh.MeshBackground(**cfg.mesh)
    assert tuple(est.box_size) == (64, 64) and tuple(est.filter_size) == (3, 3)  # (x, y) pairs


@pytest.mark.parametrize("name", ["generic", "paus"])
def test_presets_feed_the_simulator(name):
    cfg = load_config(name)
    ccd = pytest.importorskip("skysub.simulate.ccd")
    sim = ccd.CCDSimConfig(**cfg.simulate)
    assert list(sim.bands) == cfg.simulate["bands"]


def test_user_file_inherits_from_preset(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('base = "paus"\n'
                 'name = "mine"\n'
                 "[annulus]\nr_in = 20.0\n"
                 '[header]\nband = "filt2"\n'
                 "[simulate]\nsky = { NB455 = 70.0 }\nbands = [\"NB455\"]\n")
    cfg = load_config(p)
    assert cfg.name == "mine" and cfg.source == str(p)
    assert cfg.annulus["r_in"] == 20.0 and cfg.annulus["r_out"] == 45.0  # merged
    assert cfg.annulus["statistic"] == "median"
    assert cfg.header.band == "FILT2" and cfg.header.exptime == "EXPTIME"
    assert cfg.simulate["sky"]["NB455"] == 70.0 and cfg.simulate["sky"]["NB685"] == 110.0
    assert cfg.simulate["bands"] == ["NB455"]  # lists are replaced, not merged
    assert cfg.mesh == load_config("paus").mesh
    # the preset itself is untouched
    assert load_config("paus").annulus["r_in"] == 30.0


def test_base_chain_of_files_relative_and_name_default(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.toml").write_text(
        'base = "generic"\n[photometry]\naperture_radius = 6.0\n')
    b = tmp_path / "b.toml"
    b.write_text('base = "sub/a.toml"\n[annulus]\nr_out = 25.0\n')
    cfg = load_config(str(b))
    assert cfg.photometry["aperture_radius"] == 6.0
    assert cfg.annulus["r_out"] == 25.0 and cfg.annulus["r_in"] == 10.0
    assert cfg.name == "generic"  # inherited
    plain = tmp_path / "plain.toml"
    plain.write_text("[mesh]\nbox_size = 32\n")
    cfg = load_config(plain)
    assert cfg.name == "plain" and cfg.mesh == {"box_size": 32} and cfg.annulus == {}
    assert cfg.header == HeaderKeys()


def test_unknown_section_names_it_and_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('base = "paus"\n[anulus]\nr_in = 3.0\n')
    with pytest.raises(ConfigError, match=r"bad.toml: unknown top-level section.*anulus"):
        load_config(p)


def test_unknown_preset_or_missing_file_lists_presets(tmp_path):
    with pytest.raises(ConfigError, match=r"'pause'.*presets: generic, inpaint-families, "
                                          r"inpaint-generic, .*paus"):
        load_config("pause")
    with pytest.raises(ConfigError, match=r"nothere.toml.*presets: generic, inpaint-.*paus"):
        load_config(tmp_path / "nothere.toml")
    p = tmp_path / "badbase.toml"
    p.write_text('base = "hsc"\n')
    with pytest.raises(ConfigError, match=r"'hsc'.*presets"):
        load_config(p)


def test_invalid_files(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[annulus\nr_in = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML"):
        load_config(p)
    p = tmp_path / "hdr.toml"
    p.write_text('[header]\nexposure = "EXPTIME"\n')
    with pytest.raises(ConfigError, match=r"hdr.toml.*exposure.*\[header\]"):
        load_config(p)
    p = tmp_path / "hdr2.toml"
    p.write_text("[header]\nband = 3\n")
    with pytest.raises(ConfigError, match=r"\[header\] band must be a FITS keyword"):
        load_config(p)
    p = tmp_path / "notable.toml"
    p.write_text("annulus = 3\n")
    with pytest.raises(ConfigError, match=r"\[annulus\] must be a table"):
        load_config(p)
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('base = "b.toml"\n')
    b.write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
