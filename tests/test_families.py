"""Generator families of training fields (skysub.simulate.families) and their use in training."""

from __future__ import annotations

import numpy as np
import pytest

from skysub.errors import ConfigError, InputError
from skysub.removal.domain import map_statistics, psf_fwhm_of
from skysub.simulate import families as fam


@pytest.mark.parametrize("slope", [0.6, 2.0, 4.3])
def test_measured_power_spectrum_slope_is_the_requested_one(slope):
    c = fam.FamilyConfig(shape=(384, 384), family="clouds", slope=slope, sigma_ln=0.05,
                         n_filaments=0, noise=0.0)
    # the mean over four fields (one field's few large-scale modes scatter its slope)
    got = [map_statistics(fam.family_field(c, np.random.default_rng(s)))["ps_slope"]
           for s in range(4)]
    assert np.mean(got) == pytest.approx(slope, abs=0.12)


def test_training_draws_span_the_slope_and_beam_ranges_and_never_the_held_out_family():
    rng = np.random.default_rng(0)
    cfgs = [fam.random_family_config(rng, (64, 64)) for _ in range(300)]
    assert {c.family for c in cfgs} == set(fam.TRAINING_FAMILIES)
    assert fam.HELD_OUT_FAMILY not in fam.TRAINING_FAMILIES
    slopes = np.array([c.slope for c in cfgs])
    assert slopes.min() < 0.6 and slopes.max() > 4.4
    assert {c.noise_kind for c in cfgs} == set(fam.NOISE_KINDS)
    beams = [fam.random_beam(rng) for _ in range(300)]
    f = np.array([b[1] for b in beams])
    assert f.min() >= 1.5 and f.max() <= 8.0 and f.min() < 1.7 and f.max() > 7.0
    assert {b[0] for b in beams} == set(fam.BEAM_KINDS)


def test_shell_is_a_ring_at_its_radius():
    ring = fam.shell((101, 101), 50.0, 50.0, 30.0, 2.0, fill=0.2)
    assert ring[50, 80] == pytest.approx(1.0, abs=1e-9)  # on the rim: peak
    assert ring[50, 50] == pytest.approx(0.2, abs=1e-6)  # inside: the fill
    assert ring[50, 90] < 1e-10 + np.exp(-0.5 * 25)      # 5 sigma outside the rim
    rng = np.random.default_rng(1)
    c = fam.random_family_config(rng, (256, 256), families=("bubbles",))
    assert c.n_shells >= 1
    assert fam.shells((256, 256), 3, rng).max() > 0


def test_stripes_are_constant_along_the_scan_lines():
    rng = np.random.default_rng(2)
    s = fam.stripes((128, 96), rng, angle=0.0, directions=1)
    assert s.std() == pytest.approx(1.0, rel=1e-6)
    assert np.abs(s - s.mean(axis=1, keepdims=True)).max() < 1e-9  # rows constant
    t = fam.stripes((128, 96), rng, angle=np.pi / 2, directions=1)
    assert np.abs(t - t.mean(axis=0, keepdims=True)).max() < 1e-9  # columns constant
    both = fam.stripes((128, 96), rng, angle=0.0, directions=2)
    assert np.abs(both - both.mean(axis=1, keepdims=True)).max() > 0.1  # crossed scans


def test_striped_noise_field_has_the_requested_noise_level():
    c = fam.FamilyConfig(shape=(256, 256), family="clouds", level=1e-9, sigma_ln=0.0,
                         n_filaments=0, noise=2.0, noise_kind="stripes", stripe_amplitude=1.0)
    f = fam.family_field(c, np.random.default_rng(4))
    assert f.std() == pytest.approx(2.0, rel=0.1)


def test_knots_are_compact_and_gradient_has_its_amplitude():
    rng = np.random.default_rng(5)
    k = fam.knots((200, 200), 20, rng, beam_fwhm=3.0, amplitude=1.0)
    assert 0.1 < k.max() < 5.0 and (k > 0.05).mean() < 0.2
    g = fam.gradient((200, 200), 3.0, 0.3, rng)
    assert g.max() - g.min() == pytest.approx(3.0, rel=1e-9)


def test_cascade_is_positive_unit_mean_and_skewed():
    from scipy.stats import skew

    c = fam.cascade((256, 256), np.random.default_rng(6), sigma=0.45)
    assert c.min() > 0 and c.mean() == pytest.approx(1.0, rel=1e-9)
    assert skew(c.ravel()) > 0.5  # intermittent, not Gaussian


@pytest.mark.parametrize("kind", fam.BEAM_KINDS)
@pytest.mark.parametrize("fwhm", [2.0, 6.0])
def test_beams_have_unit_sum_and_their_fwhm(kind, fwhm):
    p = fam.family_psf(kind, fwhm, np.random.default_rng(7))
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    assert psf_fwhm_of(p) == pytest.approx(fwhm, rel=0.12)


def test_unknown_family_and_beam_are_refused():
    with pytest.raises(InputError, match="unknown field families"):
        fam.random_family_config(np.random.default_rng(0), families=("nebula",))
    with pytest.raises(InputError, match="unknown beam"):
        fam.family_psf("square", 3.0)


def _families_train_config():
    from skysub.config import load_config
    from skysub.removal.training import InpaintTrainConfig

    train = dict(load_config("inpaint-families").removal["train"])
    train.pop("masks", None)
    return InpaintTrainConfig.from_dict(train)


def test_families_preset_loads():
    tc = _families_train_config()
    assert tc.fields == "families" and tc.init == "inpaint-default"
    assert fam.HELD_OUT_FAMILY not in tc.families
    assert tc.psf_fwhm_range == [1.5, 8.0] and not tc.calibrate
    assert set(tc.psf) == set(fam.BEAM_KINDS)


def test_training_config_refuses_the_held_out_family():
    from skysub.removal.training import InpaintTrainConfig

    with pytest.raises(ConfigError, match="held-out"):
        InpaintTrainConfig.from_dict({"fields": "families", "families": ["clouds", "cascade"]})
    with pytest.raises(ConfigError, match="psf_fwhm_range"):
        InpaintTrainConfig.from_dict({"psf_fwhm_range": [8.0, 2.0]})
    with pytest.raises(ConfigError, match="fields"):
        InpaintTrainConfig.from_dict({"fields": "cascade"})


def test_training_fields_of_the_preset_are_training_families_with_scaled_holes():
    from dataclasses import replace

    from skysub.removal.masks import MaskTable
    from skysub.removal.training import field_simulations, make_fields

    tc = replace(_families_train_config(), field_size=128, realisations=1)
    sims = [s for _, s in field_simulations(tc, 12, seed=11)]
    assert {s.extra["family"] for s in sims} <= set(fam.TRAINING_FAMILIES)
    for s in sims:
        assert psf_fwhm_of(s.psf) == pytest.approx(s.extra["psf_fwhm"], rel=0.12)
        assert s.extra["mask_scale"] == pytest.approx(s.extra["psf_fwhm"] / 3.5)
    table = MaskTable.from_config(None, psf_fwhm=3.5)
    radii = {}
    for lo in (1.5, 7.5):
        c = replace(tc, field_size=192, psf=["gaussian"], psf_fwhm_range=[lo, lo])
        radii[lo] = np.median(make_fields(c, 1, seed=3, table=table)["radius"])
    assert radii[7.5] / radii[1.5] > 3.0  # the holes follow the beam (7.5 / 1.5 = 5)


def test_mask_table_scaled():
    from skysub.removal.masks import MaskTable

    t = MaskTable.from_config(None, psf_fwhm=3.5)
    s = t.scaled(2.0)
    assert s.radii == tuple(2 * r for r in t.radii)
    assert s.annulus_out == 2 * t.annulus_out and s.max_radius_px == t.max_radius_px
    with pytest.raises(ConfigError):
        t.scaled(0.0)


def test_held_out_family_test_fields():
    from skysub.removal.evaluation import simulate_test_fields

    sims = simulate_test_fields(2, 128, seed=9, levels=(1000.0,), family="cascade")
    assert len(sims) == 2 and all(s.extra["family"] == "cascade" for s in sims)
    assert all(1.5 <= s.extra["psf_fwhm"] <= 8.0 for s in sims)
    assert not np.allclose(sims[0].image, sims[0].truth)
    with pytest.raises(InputError, match="unknown field family"):
        simulate_test_fields(1, 128, family="nebula")


# -- the mixture of classic and family fields (fields = "mixed") ----------------------------------
def _mixed(**kw):
    from dataclasses import replace

    from skysub.config import load_config
    from skysub.removal.training import InpaintTrainConfig

    train = dict(load_config("inpaint-mixed").removal["train"])
    train.pop("masks", None)
    return replace(InpaintTrainConfig.from_dict(train), field_size=128, realisations=1, **kw)


def test_mixed_preset_loads():
    tc = _mixed()
    assert tc.fields == "mixed" and tc.family_fraction == 0.5 and not tc.calibrate
    assert fam.HELD_OUT_FAMILY not in tc.families and tc.init == "inpaint-default"


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_mixture_honours_the_family_fraction(fraction):
    from skysub.removal.training import field_simulations, mixture_draws

    for n, seed in ((40, 1), (7, 2), (1000, 3)):
        draws = mixture_draws(_mixed(family_fraction=fraction), n, seed)
        assert draws.sum() == round(fraction * n)
    tc = _mixed(family_fraction=fraction)
    sims = [s for _, s in field_simulations(tc, 8, seed=4)]
    kinds = [s.extra["family"] for s in sims]
    assert sum(k != "classic" for k in kinds) == round(8 * fraction)
    assert set(kinds) - {"classic"} <= set(fam.TRAINING_FAMILIES)
    for s in sims:
        if s.extra["family"] == "classic":  # the classic domain: 3.5 px beams of its kinds
            assert psf_fwhm_of(s.psf) == pytest.approx(3.5, rel=0.12)
            assert s.extra.get("mask_scale", 1.0) == 1.0
        else:
            assert 1.5 * 0.88 <= psf_fwhm_of(s.psf) <= 8.0 * 1.12


def test_mixture_at_its_ends_is_the_classic_or_the_families_generator():
    from dataclasses import replace

    from skysub.removal.training import field_simulations

    def images(tc):
        return [s.image for _, s in field_simulations(tc, 4, seed=6)]

    classic = replace(_mixed(family_fraction=0.0), psf=["gaussian", "airy", "herschel"])
    for a, b in zip(images(classic), images(replace(classic, fields="classic",
                                                    psf_fwhm_range=[])), strict=True):
        np.testing.assert_array_equal(a, b)
    fams = _mixed(family_fraction=1.0)
    for a, b in zip(images(fams), images(replace(fams, fields="families")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mixture_reproduces_from_its_seed():
    from skysub.removal.training import field_simulations, mixture_draws

    tc = _mixed()
    a = [s for _, s in field_simulations(tc, 6, seed=8)]
    b = [s for _, s in field_simulations(tc, 6, seed=8)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        assert x.extra["family"] == y.extra["family"]
    picks = {tuple(mixture_draws(tc, 20, s)) for s in range(6)}
    assert len(picks) > 1  # which fields are families depends on the seed


@pytest.mark.parametrize("value", [1.5, -0.1, "half", True, None])
def test_mixture_config_errors_name_the_key(value):
    from skysub.removal.training import InpaintTrainConfig

    with pytest.raises(ConfigError, match=r"\[removal.train\] family_fraction"):
        InpaintTrainConfig.from_dict({"fields": "mixed", "family_fraction": value})
    with pytest.raises(ConfigError, match=r"\[removal.train\] fields.*mixed"):
        InpaintTrainConfig.from_dict({"fields": "blend"})
