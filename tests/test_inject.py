"""Injection–recovery (skysub.inject): truths against analytic cases, recovery on a real frame,
the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skysub.cli import main
from skysub.errors import InputError
from skysub.image import Image
from skysub.inject import (
    InjectionSettings,
    Method,
    inject_sources,
    merged_catalog,
    parse_methods,
    run_injection,
    sky_sigma,
    summarise,
)


def _flat(shape=(256, 256), sky=100.0, sigma=5.0, seed=1):
    rng = np.random.default_rng(seed)
    return Image(data=sky + rng.normal(0, sigma, shape), mask=None)


def _real_frame() -> Path:
    """A real optical frame that astropy ships in its test data (300 x 440 px)."""
    import astropy.io.fits.tests as t

    p = Path(t.__file__).parent / "data" / "comp.fits"
    if not p.exists():
        pytest.skip("astropy's comp.fits test frame is not installed")
    return p


def test_sky_sigma_of_white_noise():
    img = _flat(sigma=5.0)
    assert sky_sigma(img) == pytest.approx(5.0, rel=0.04)


def test_truths_are_exact_for_a_gaussian_star():
    img = _flat(sigma=2.0)
    s = InjectionSettings(kind="star", n_per_image=20, snr=(50, 200), radius=6.0, psf_fwhm=3.0,
                          min_separation=30, poisson=False)
    inj = inject_sources(img, None, s, seed=3)
    t = inj.truth
    assert len(t) == 20
    # light of a Gaussian inside r: 1 - exp(-r^2 / 2 sigma^2) (pixel integration ~1e-3)
    sig = 3.0 / 2.3548
    frac = 1 - np.exp(-6.0 ** 2 / (2 * sig ** 2))
    np.testing.assert_allclose(t["flux_true_aper"] / t["flux_true"], frac, rtol=3e-3)
    # the photometric background truth is the frame's own pixels: sky 100 +- noise / sqrt(N)
    np.testing.assert_allclose(t["bkg_true"], 100.0, atol=5 * 2.0 / np.sqrt(np.pi * 36))
    np.testing.assert_allclose(t["floor"], 2.0 / np.sqrt(np.pi * 36), rtol=0.35)
    # SNR definition: flux / (sky sigma sqrt(pi r^2))
    np.testing.assert_allclose(t["snr"], t["flux_true"] / (t["sky_sigma"] * np.sqrt(np.pi * 36)))
    # the injected light is in the image and nowhere else
    added = inj.image.data - img.data
    assert added.sum() == pytest.approx(t["flux_true"].sum(), rel=1e-3)
    assert img.data.mean() == pytest.approx(_flat(sigma=2.0).data.mean())  # input untouched


def test_subtracting_the_photometric_truth_recovers_the_aperture_flux():
    from skysub.inject.core import aperture_sums

    img = _flat(sigma=3.0)
    s = InjectionSettings(kind="galaxy", n_per_image=15, radius=8.0, min_separation=30,
                          poisson=False)
    inj = inject_sources(img, None, s, seed=5)
    t = inj.truth
    total, area = aperture_sums(inj.image, np.asarray(t["x"]), np.asarray(t["y"]), 8.0)
    np.testing.assert_allclose(total - area * t["bkg_true"], t["flux_true_aper"], rtol=1e-9)


def test_positions_keep_their_distances_and_avoid_masks():
    img = _flat((200, 300))
    img.mask[:, :100] = True  # a blank chip
    cat = Table({"id": [1, 2], "x": [150.0, 250.0], "y": [100.0, 100.0]})
    s = InjectionSettings(n_per_image=40, min_separation=25, edge_margin=10, radius=5)
    inj = inject_sources(img, cat, s, seed=0)
    x, y = np.asarray(inj.truth["x"]), np.asarray(inj.truth["y"])
    assert 5 <= len(x) <= 40
    assert x.min() > 100 + 5 + 2 - 0.5  # clear of the masked chip by radius + 2
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.eye(len(x)) * 1e9
    assert d.min() >= 25
    dc = np.hypot(x[:, None] - cat["x"][None], y[:, None] - cat["y"][None])
    assert dc.min() >= 25
    assert np.all((x >= 10) & (x <= 289) & (y >= 10) & (y <= 189))
    # reproducible from (seed, realisation); another realisation differs
    again = inject_sources(img, cat, s, seed=0)
    np.testing.assert_array_equal(again.truth["x"], inj.truth["x"])
    other = inject_sources(img, cat, s, seed=0, realisation=1)
    assert not np.array_equal(other.truth["x"][:5], inj.truth["x"][:5])


def test_near_places_blends():
    img = _flat()
    cat = Table({"id": [1, 2, 3], "x": [60.0, 128.0, 190.0], "y": [60.0, 128.0, 190.0]})
    s = InjectionSettings(n_per_image=6, near=(6, 10), min_separation=5, radius=4)
    inj = inject_sources(img, cat, s, seed=2)
    dc = np.hypot(np.asarray(inj.truth["x"])[:, None] - cat["x"][None],
                  np.asarray(inj.truth["y"])[:, None] - cat["y"][None]).min(axis=1)
    assert len(dc) >= 3 and np.all((dc >= 6 - 1e-9) & (dc <= 10 + 1e-9))


def test_merged_catalog_keeps_rows_and_marks_point_sources():
    own = Table({"id": [1, 2], "x": [1.0, 2.0], "y": [3.0, 4.0], "mag": [20.0, 21.0]})
    inj = Table({"id": [10], "x": [5.0], "y": [6.0], "mag": [22.0], "r50": [2.0],
                 "sersic_n": [1.5], "ba": [0.5], "theta": [30.0]})
    m = merged_catalog(own, inj)
    assert list(m["id"]) == [1, 2, 10]
    assert np.isnan(m["r50"][:2]).all() and m["r50"][2] == 2.0
    assert m["mag"][1] == 21.0


def test_recovery_on_a_real_frame_is_unbiased_for_bright_stars():
    import sep

    from skysub.io import read_image

    frame = read_image(_real_frame(), hdu=1)
    data = np.ascontiguousarray(frame.data)
    bkg = sep.Background(data)
    obj = sep.extract(data - bkg.back(), 3.0, err=bkg.globalrms, minarea=5)
    cat = Table({"id": np.arange(len(obj)), "x": obj["x"], "y": obj["y"]})  # the frame's own
    s = InjectionSettings(kind="star", n_per_image=30, snr=(100, 400), radius=5.0,
                          psf_fwhm=3.0, min_separation=25)
    res = run_injection([frame], cat, parse_methods("aperture,optimal", "annulus"), s,
                        realisations=2, seed=1, quiet=True)
    summ = summarise(res["recovered"])
    allrows = summ[summ["group"] == "all"]
    assert set(allrows["method"]) == {"aperture+annulus", "optimal+annulus"}
    assert allrows["n"].min() >= 40
    for r in allrows:
        # the flux truths are known exactly: bright stars come back within a few per cent
        assert abs(r["bias"]) < 0.03, r
        assert r["sigma68"] < 0.1, r
    rec = res["recovered"]
    ap = rec[rec["method"] == "aperture+annulus"]
    np.testing.assert_allclose(ap["truth"], ap["flux_true_aper"])
    opt = rec[rec["method"] == "optimal+annulus"]
    np.testing.assert_allclose(opt["truth"], opt["flux_true"])


def test_parse_methods_and_errors():
    ms = parse_methods("aperture,lumos", "annulus,mesh")
    assert [m.label for m in ms] == ["aperture+annulus", "aperture+mesh", "lumos"]
    assert Method("optimal", "annulus").label == "optimal+annulus"
    with pytest.raises(InputError, match="unknown photometer 'apperture'"):
        parse_methods("apperture", "annulus")
    with pytest.raises(InputError, match="unknown method 'anulus'"):
        parse_methods("aperture", "anulus")
    with pytest.raises(InputError, match="kind"):
        InjectionSettings(kind="comet")
    with pytest.raises(InputError, match="snr"):
        InjectionSettings(snr=(10, 5))
    with pytest.raises(InputError, match="too few unmasked pixels"):
        sky_sigma(Image(data=np.ones((8, 8)), mask=None))


def test_cli_inject_writes_tables_and_figure(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = tmp_path / "frame.fits"
    fits.PrimaryHDU(200.0 + rng.normal(0, 4.0, (160, 200))).writeto(img)
    cat = tmp_path / "cat.csv"
    Table({"id": [1], "x": [20.0], "y": [20.0]}).write(cat)
    out = tmp_path / "inj"
    argv = [str(img), "--catalog", str(cat), "-o", str(out), "--n", "12", "--realisations",
            "2", "--snr", "50", "200", "--min-separation", "25", "--photometer",
            "aperture,optimal", "--psf-fwhm", "3", "--write-images", "--quiet"]
    assert main(["inject", *argv]) == 0
    for name in ("recovery.csv", "summary.csv", "truth.csv", "recovery.png",
                 "catalog_injected.csv"):
        assert (out / name).stat().st_size > 0
    assert len(list((out / "images").glob("*.fits"))) == 2
    rec = Table.read(out / "recovery.csv")
    assert set(rec["method"]) == {"aperture+annulus", "optimal+annulus"}
    good = rec[rec["method"] == "optimal+annulus"]
    assert abs(np.median(good["rel_err"])) < 0.05
    # the injected frames hold the injected light
    truth = Table.read(out / "truth.csv")
    with fits.open(out / "images" / "frame_inj0.fits") as h:
        added = h[0].data.astype(float).sum() - fits.getdata(img).astype(float).sum()
    t0 = truth[truth["realisation"] == 0]
    assert added == pytest.approx(float(np.sum(t0["flux_true"])), rel=0.05)
    # no overwrite without --overwrite
    assert main(["inject", *argv]) == 2
    assert "exists" in capsys.readouterr().err
