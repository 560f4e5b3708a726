"""SNR-adaptive masks (Madarász et al. eq. 1, Table 3) and the extended-emission simulator."""

import numpy as np
import pytest

from skysub.config import load_config
from skysub.errors import ConfigError
from skysub.removal.core import paint_holes
from skysub.removal.masks import MaskTable, mask_radii, peak_snr
from skysub.simulate.extended import (
    FLUX_LEVELS,
    gaussian_random_field,
    inject_sources,
    make_psf,
    simulate_extended,
)


def test_scanmap_blue_thresholds():
    t = MaskTable()  # Scan Map blue (Table 3)
    snr = np.array([-1, 3.99, 4.0, 7.9, 8.0, 12.99, 13.0, 139.9, 140.0, 299.9, 300.0, 1e5, np.nan])
    assert list(t.radius_for(snr)) == [5, 5, 6, 6, 7, 7, 9, 9, 11, 11, 12, 12, 12]


def test_presets_hold_the_paper_tables():
    sm = load_config("inpaint-scanmap").removal["masks"]
    for band, radii in (("blue", [5, 6, 7, 9, 11, 12]), ("green", [5, 6, 8, 10, 11, 13]),
                        ("red", [4, 6, 7, 8, 9, 10])):
        t = MaskTable.from_config(sm, band=band)
        assert list(t.radii) == radii
        assert (t.source_radius, t.annulus_in, t.annulus_out) == (8.0, 10.0, 22.0)
    par = MaskTable.from_config(load_config("inpaint-parallel").removal["masks"], band="green")
    assert list(par.thresholds) == [13, 20, 300, 590, 855]
    assert list(par.radii) == [4, 5, 7, 8, 9, 10]
    assert (par.source_radius, par.annulus_in, par.annulus_out) == (4.0, 8.0, 18.0)
    assert list(par.radius_for(np.array([12.0, 855.0]))) == [4, 10]


def test_generic_table_scales_with_fwhm():
    g = load_config("inpaint-generic").removal["masks"]
    a = MaskTable.from_config(g, psf_fwhm=3.5)
    b = MaskTable.from_config(g, psf_fwhm=7.0)
    assert np.allclose(np.array(b.radii), 2 * np.array(a.radii))
    assert b.annulus_out == pytest.approx(2 * a.annulus_out)
    assert list(a.thresholds) == list(b.thresholds)
    # the removal table: one hole of 1.45 FWHM for every SNR, grown by the PSF wings to 5 sigma
    assert list(a.radii) == pytest.approx([1.45 * 3.5]) and a.thresholds == ()
    assert a.wing_sigma == 5.0
    # the training table is the Scan Map blue one in FWHM units (its full mask ~ 12 px)
    t = _training_table()
    assert t.radii[-1] == pytest.approx(12.075) and t.wing_sigma == 1.0


def test_bad_tables():
    with pytest.raises(ConfigError, match="len\\(radii\\)"):
        MaskTable(thresholds=(1.0, 2.0), radii=(3.0, 4.0))
    with pytest.raises(ConfigError, match="increase"):
        MaskTable(thresholds=(5.0, 2.0), radii=(3.0, 4.0, 5.0))
    with pytest.raises(ConfigError, match="unknown key"):
        MaskTable.from_config({"radius": 3})
    with pytest.raises(ConfigError, match="no band"):
        MaskTable.from_config({"radii": {"blue": [1, 2, 3, 4, 5, 6]}, "default_band": "red"})


def test_peak_snr_analytic():
    """Flat background mu + Gaussian noise sigma + a point of height h at a pixel centre:
    SNR = h / sigma (up to the noise of the annulus estimates)."""
    rng = np.random.default_rng(0)
    mu, sigma, h = 100.0, 2.0, 50.0
    img = mu + sigma * rng.standard_normal((200, 200))
    x = np.array([50.0, 120.0, 150.0])
    y = np.array([60.0, 100.0, 150.0])
    for xi, yi in zip(x, y, strict=True):
        img[int(yi), int(xi)] += h
    st = peak_snr(img, x, y, MaskTable())
    assert np.allclose(st["mu_bg"], mu, atol=0.3)
    assert np.allclose(st["sigma_bg"], sigma, rtol=0.1)
    assert np.allclose(st["snr"], h / sigma, rtol=0.15)
    radius, snr = mask_radii(img, x, y, MaskTable())
    assert np.all(radius == 9)  # 13 <= 25 < 140: the moderate mask


def test_peak_snr_edge_nan_and_off_image():
    img = np.ones((60, 60))
    img += np.random.default_rng(1).normal(0, 0.1, img.shape)
    img[:, :10] = np.nan
    st = peak_snr(img, np.array([5.0, 30.0, -100.0]), np.array([30.0, 30.0, 5.0]), MaskTable())
    assert np.isfinite(st["snr"][:2]).all()
    assert np.isnan(st["snr"][2])  # no pixel at all: NaN -> the largest mask
    assert MaskTable().radius_for(st["snr"])[2] == 12


def test_paint_holes():
    h = paint_holes((20, 20), np.array([5.0, 25.0]), np.array([5.0, 5.0]), np.array([2.0, 3.0]))
    assert h.sum() == 13  # pixel centres within r = 2 of (5, 5): 13; the other is off the map
    assert h[5, 7] and not h[5, 8]


def test_simulator_truth_and_seed():
    a = simulate_extended(seed=3, psf="herschel")
    b = simulate_extended(seed=3, psf="herschel")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)
    assert 1 <= len(a.catalog) <= 210
    assert set(np.asarray(a.catalog["flux"])) <= set(FLUX_LEVELS)
    # the injected flux is all there (sources kept away from the edges)
    s = simulate_extended(seed=4, n_sources=30, flux=500.0, margin=30)
    assert (s.image - s.truth).sum() == pytest.approx(30 * 500.0, rel=1e-3)


@pytest.mark.parametrize("kind", ["gaussian", "airy", "herschel"])
def test_psfs_unit_sum_and_fwhm(kind):
    p = make_psf(kind, 4.0)
    assert p.sum() == pytest.approx(1.0) and p.shape[0] % 2 == 1
    c = p.shape[0] // 2
    assert p[c, c] == p.max() or kind == "herschel"


def test_power_law_field():
    rng = np.random.default_rng(0)
    g = gaussian_random_field((256, 256), 3.0, rng)
    assert abs(g.mean()) < 1e-10 and g.std() == pytest.approx(1.0)
    from skysub.metrics import power_spectrum

    k, p = power_spectrum(g)
    sel = (k > 0.02) & (k < 0.3)
    slope = np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.3)


def test_inject_subpixel_centroid():
    psf = make_psf("gaussian", 3.0)
    img = inject_sources(np.zeros((41, 41)), psf, np.array([20.3]), np.array([19.8]),
                         np.array([10.0]))
    yy, xx = np.indices(img.shape)
    assert img.sum() == pytest.approx(10.0, rel=1e-6)
    assert (img * xx).sum() / img.sum() == pytest.approx(20.3, abs=1e-3)
    assert (img * yy).sum() / img.sum() == pytest.approx(19.8, abs=1e-3)


# -- PSF-aware growth (wing_sigma) -------------------------------------------------------------
def test_wing_radius_gaussian_matches_analytic():
    from skysub.removal.masks import wing_radius
    from skysub.simulate.psf import gaussian_psf

    fwhm = 4.0
    sigma = fwhm / 2.3548
    psf = gaussian_psf(61, fwhm)
    snr = np.array([10.0, 100.0, 1000.0, 1e5])
    r = wing_radius(psf, snr, 1.0)
    analytic = sigma * np.sqrt(2 * np.log(snr))  # exp(-r^2 / 2 s^2) * snr = 1
    # the hole reaches the last sampled (pixel-integrated) radius still above the threshold:
    # within a pixel of the analytic radius
    assert np.all(np.abs(r - analytic) < 1.0)
    # below threshold everywhere: no growth
    assert wing_radius(psf, np.array([0.5]), 1.0)[0] == 0.0


def _training_table() -> MaskTable:
    """The inpaint-generic preset's training table (Scan Map blue radii, wing growth to 1
    sigma) for a 3.5 px FWHM."""
    return MaskTable.for_training(load_config("inpaint-generic").removal, psf_fwhm=3.5)


def test_wing_growth_covers_airy_rings_and_leaves_gaussian_alone():
    from skysub.removal.masks import psf_envelope

    table = _training_table()
    assert table.wing_sigma == 1.0
    airy = make_psf("airy", 3.5, size=61)
    gauss = make_psf("gaussian", 3.5, size=61)
    snr = np.array([5.0, 300.0, 3000.0])
    base = table.radius_for(snr)
    # Gaussian wings fall fast: the table's radii already hold them
    assert np.allclose(table.radius_for(snr, gauss), base)
    grown = table.radius_for(snr, airy)
    assert grown[0] == base[0] and grown[2] > base[2] + 5
    # what is left beyond the grown hole is below 1 sigma at this SNR
    r, env = psf_envelope(airy)
    assert np.all(env[r > grown[2]] * 3000.0 < 1.0)
    # the cap holds
    capped = MaskTable(wing_sigma=1.0, max_radius_px=14.0)
    assert capped.radius_for(np.array([1e6]), airy)[0] == 14.0
    with pytest.raises(ConfigError, match="wing_sigma"):
        MaskTable(wing_sigma=-1.0)


def test_mask_radii_uses_amplitude_over_pixel_noise():
    from skysub.image import as_image
    from skysub.removal.masks import pixel_noise

    rng = np.random.default_rng(3)
    yy, xx = np.indices((200, 200))
    sky = 50 + 0.2 * xx + 10 * np.sin(yy / 15.0) + 2.0 * rng.standard_normal((200, 200))
    assert pixel_noise(as_image(sky)) == pytest.approx(2.0, rel=0.04)
    airy = make_psf("airy", 3.5, size=61)
    img = inject_sources(sky, airy, np.array([100.3]), np.array([99.6]), np.array([2e5]))
    table = _training_table()
    r_plain, snr = mask_radii(img, [100.3], [99.6], table)
    r_psf, _ = mask_radii(img, [100.3], [99.6], table, psf=airy)
    assert r_plain[0] == pytest.approx(3.45 * 3.5)
    # amplitude / noise ~ 2e5 * peak / 2 -- its rings stay above 1 sigma (the preset's
    # wing_sigma) out to ~20 px
    amp = 2e5 * airy.max() / 2.0
    r, env = psf_envelope_of(airy)
    expect = r[env * amp >= table.wing_sigma].max()
    assert r_psf[0] == pytest.approx(min(expect, 24.0), abs=1.5)
    assert r_psf[0] > r_plain[0] + 4


def psf_envelope_of(psf):
    from skysub.removal.masks import psf_envelope

    return psf_envelope(psf)
