"""The gain a FITS header implies, and what skysub does when it implies none.

A frame in counts (or electrons) per second has a gain of the exposure time (times the
detector's) electrons per image unit; a frame whose header gives no gain leaves the sources'
shot noise out (SExtractor's GAIN = 0) instead of assuming 1 electron per image unit, which
on a frame with values ~1e-4 (an HST frame in counts/s) made every error wrong by orders of
magnitude.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skysub.errors import HeaderError, InputError
from skysub.image import Image
from skysub.inject import InjectionSettings, parse_methods, run_injection, summarise
from skysub.io import read_image, read_meta


def hdr(**cards):
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return h


def test_gain_keywords_and_rate_units():
    m = read_meta(hdr(GAIN=2.5))
    assert m.gain == 2.5 and m.gain_known and m.source_gain == 2.5
    m = read_meta(hdr())
    assert not m.gain_known and m.gain == 1.0 and m.source_gain == float("inf")
    assert read_meta(hdr(CCDGAIN=3.0)).gain == 3.0                   # fallback keyword
    assert read_meta(hdr(ATODGAIN=7.0, GAIN=2.0)).gain == 2.0        # the configured one first
    m = read_meta(hdr(BUNIT="ELECTRONS/S", EXPTIME=500.0, CCDGAIN=2.0))
    assert m.gain == 500.0 and m.gain_known                          # e-/s: gain = exptime
    m = read_meta(hdr(BUNIT="COUNTS/S", EXPTIME=600.0, ATODGAIN=7.0))
    assert m.gain == pytest.approx(4200.0)                           # DN/s: 7 e-/DN x 600 s
    assert not read_meta(hdr(BUNIT="COUNTS/S", EXPTIME=600.0)).gain_known
    assert not read_meta(hdr(BUNIT="cps", ATODGAIN=7.0)).gain_known  # no exposure time
    m = read_meta(hdr(BUNIT="COUNTS/S", EXPTIME=600.0, ATODGAIN=7.0), overrides={"gain": 9.0})
    assert m.gain == 9.0 and m.gain_known                            # --gain wins as given


def test_gain_errors_name_the_keyword():
    with pytest.raises(HeaderError, match="counts per second"):
        read_meta(hdr(), required=("gain",), source="f.fits")
    with pytest.raises(HeaderError, match="GAIN must be a number"):
        read_meta(hdr(GAIN="high"))
    with pytest.raises(InputError, match="gain must be positive"):
        read_meta(hdr(GAIN=-1.0))
    # a rate frame whose detector gain is known satisfies a training's required gain
    m = read_meta(hdr(BUNIT="COUNTS/S", EXPTIME=600.0, ATODGAIN=7.0), required=("gain",))
    assert m.gain_known


def _white_frame(tmp_path, scale, gain_card):
    """A 256 x 256 frame of white noise (sigma 5 x scale) written with or without GAIN."""
    rng = np.random.default_rng(5)
    data = (100.0 + rng.normal(0.0, 5.0, (256, 256))) * scale
    h = fits.Header()
    if gain_card is not None:
        h["GAIN"] = gain_card
    p = tmp_path / f"white-{scale:g}.fits"
    fits.PrimaryHDU(data.astype(np.float32), header=h).writeto(p)
    return p


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_injection_without_a_gain_has_honest_pulls_in_any_units(tmp_path, scale):
    # white noise and noise-free injected stars: the truth is that the only noise is the
    # frame's; the errors must say so in counts or in counts per second alike
    frame = read_image(_white_frame(tmp_path, scale, None))
    assert not frame.meta.gain_known
    s = InjectionSettings(kind="star", n_per_image=40, snr=(5, 500), radius=5.0,
                          psf_fwhm=3.0, min_separation=25)
    cat = Table({"id": [1], "x": [2.0], "y": [2.0]})
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = run_injection([frame], cat, parse_methods("aperture,optimal", "annulus"), s,
                            realisations=3, seed=2,
                            quiet=True, photometer_kwargs={"error_calibration": "none"})
    assert any("no gain in the header" in str(w.message) for w in got)
    summ = summarise(res["recovered"])
    for r in summ[summ["group"] == "all"]:
        assert 0.85 < r["pull_sigma68"] < 1.2, r
        assert abs(r["bias"]) < 0.02, r


def test_a_known_gain_still_adds_shot_noise(tmp_path):
    # the same frame with GAIN = 0.5 e-/ADU (pixel noise 2.5 e-): bright injected stars carry
    # large shot noise
    # and the errors carry it too (pulls ~1 at high SNR, where the background is negligible)
    frame = read_image(_white_frame(tmp_path, 1.0, 0.5))
    assert frame.meta.gain_known and frame.meta.gain == 0.5
    s = InjectionSettings(kind="star", n_per_image=40, snr=(200, 500), radius=5.0,
                          psf_fwhm=3.0, min_separation=25)
    cat = Table({"id": [1], "x": [2.0], "y": [2.0]})
    res = run_injection([frame], cat, parse_methods("aperture", "annulus"), s,
                        realisations=3, seed=3,
                        quiet=True, photometer_kwargs={"error_calibration": "none"})
    rec = res["recovered"]
    # the shot noise dominates: the errors are several times the background-only ones
    assert np.median(rec["flux_err"]) > 3 * 5.0 * np.sqrt(np.pi * 25)
    summ = summarise(rec)
    r = summ[summ["group"] == "all"][0]
    assert 0.85 < r["pull_sigma68"] < 1.2, r


def test_bare_arrays_keep_the_documented_gain():
    img = Image(data=np.zeros((4, 4)), mask=None)
    assert img.meta.gain == 1.0 and img.meta.gain_known


def test_drizzle_output_unit_and_an_implausible_gain(tmp_path):
    # a drizzled HST frame: BUNIT empty, D001OUUN 'cps', the detector gain in ATODGAIN
    m = read_meta(hdr(D001OUUN="cps", EXPTIME=1000.0, ATODGAIN=7.0))
    assert m.gain == pytest.approx(7000.0)
    # a header gain that makes the pixel noise a fraction of an electron does not fit the
    # frame's units: treated as unknown (warning), or an error where a gain is required
    rng = np.random.default_rng(1)
    p = tmp_path / "cps.fits"
    fits.PrimaryHDU(rng.normal(0.0, 3e-5, (64, 64)).astype(np.float32),
                    header=hdr(ATODGAIN=7.0)).writeto(p)
    with pytest.warns(UserWarning, match="counts per second"):
        img = read_image(p)
    assert not img.meta.gain_known
    with pytest.raises(HeaderError, match="give --gain"):
        read_image(p, required=("gain",))
    assert read_image(p, overrides={"gain": 2e6}).meta.gain_known   # the user's word wins
    q = tmp_path / "adu.fits"   # the same noise in ADU (sigma 30 ADU, 7 e-/ADU): plausible
    fits.PrimaryHDU(rng.normal(1000.0, 30.0, (64, 64)).astype(np.float32),
                    header=hdr(ATODGAIN=7.0)).writeto(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(q).meta.gain == 7.0
