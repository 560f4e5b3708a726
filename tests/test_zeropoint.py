"""Zero points from the user's data (skysub.photometry.zeropoint)."""

import numpy as np
import pytest
from astropy.io import fits

from skysub.errors import InputError
from skysub.image import Image
from skysub.inject import InjectionSettings, inject_sources
from skysub.photometry.zeropoint import (
    ZeroPoint,
    fit_zeropoint,
    header_zeropoint,
    resolve_zeropoint,
)


def _frame_with_stars(zp: float, *, seed=0, n=40, snr=(50, 500)):
    rng = np.random.default_rng(seed)
    img = Image(data=300.0 + rng.normal(0, 6.0, (400, 400)), mask=None)
    s = InjectionSettings(n_per_image=n, snr=snr, psf_fwhm=3.0, radius=5.0, min_separation=40,
                          zeropoint=zp)
    inj = inject_sources(img, None, s, seed=seed)
    return inj.image, inj.truth


@pytest.mark.parametrize("zp", [23.0, 30.7])
def test_fit_recovers_the_zero_point_of_stars(zp):
    img, cat = _frame_with_stars(zp)
    res = fit_zeropoint(img, cat)
    assert res.source == "fit" and res.n >= 20 and not res.warning
    # aperture 12 px holds all of a FWHM-3 Gaussian: the fit is unbiased to its error
    assert res.value == pytest.approx(zp, abs=max(4 * res.error, 0.005))
    assert res.scatter < 0.05
    np.testing.assert_allclose(res.flux(cat["mag"]), cat["flux_true"], rtol=0.02)


def test_six_bright_stars_recover_the_zero_point_within_the_reported_error():
    """A frame with only 6 bright stars: the inverse-variance fit recovers the known zero
    point within 3x its reported error on every draw, and that error is never below the
    photon-noise floor of 6 stars of SNR <= 500."""
    pulls = []
    for seed in range(6):
        img, cat = _frame_with_stars(27.0, seed=seed, n=6, snr=(50, 500))
        res = fit_zeropoint(img, cat)
        assert res.n >= 5 and "only" in res.warning
        assert res.error >= 1.0857 / 500 / np.sqrt(6)
        pulls.append((res.value - 27.0) / res.error)
    assert np.all(np.abs(pulls) < 3.0), pulls


def test_fit_warns_when_catalogue_and_image_disagree():
    img, cat = _frame_with_stars(25.0, seed=3)
    rng = np.random.default_rng(1)
    cat["mag"] = cat["mag"] + rng.normal(0, 0.4, len(cat))  # another band's magnitudes
    res = fit_zeropoint(img, cat)
    assert "disagree" in res.warning


def test_header_and_given_take_precedence():
    img, cat = _frame_with_stars(25.0)
    hdr = fits.Header({"PHOTZP": 26.5})
    assert header_zeropoint(hdr).value == 26.5
    assert header_zeropoint(hdr).source == "header:PHOTZP"
    with_hdr = Image(data=img.data, mask=img.mask, header=hdr)
    assert resolve_zeropoint(with_hdr, cat).value == 26.5
    assert resolve_zeropoint(with_hdr, cat, given=24.0) == ZeroPoint(24.0, "given")
    assert resolve_zeropoint(img, cat).source == "fit"
    with pytest.raises(InputError, match="not a number"):
        header_zeropoint(fits.Header({"MAGZPT": "abc"}))


def test_fit_errors_are_clear():
    img, cat = _frame_with_stars(25.0, n=3)
    with pytest.raises(InputError, match="only 3 isolated"):
        fit_zeropoint(img, cat)
    del cat["mag"]
    with pytest.raises(InputError, match="column mag"):
        fit_zeropoint(img, cat)


def test_injected_magnitudes_follow_the_frames_own_zero_point():
    img, cat = _frame_with_stars(27.0, seed=5)
    own = cat["id", "x", "y", "mag"]
    s = InjectionSettings(n_per_image=10, psf_fwhm=3.0, radius=5.0, min_separation=20)
    inj = inject_sources(img, own, s, seed=1)
    assert inj.truth.meta["zeropoint"] == pytest.approx(27.0, abs=0.02)
    np.testing.assert_allclose(inj.truth["mag"],
                               inj.truth.meta["zeropoint"] - 2.5 * np.log10(inj.truth["flux_true"]))
    # without magnitudes in the catalogue there is nothing to tie to: 25
    assert inject_sources(img, own["id", "x", "y"], s, seed=1).truth.meta["zeropoint"] == 25.0


def test_fit_selects_on_white_noise_errors(monkeypatch):
    """The fit measures a few isolated catalogued stars; an empty-aperture error calibration
    would take its 'empty' positions away from those stars only -- among the frame's other
    sources on a real frame (where it inflated every error until no star passed the SNR cut:
    astropy's comp.fits).  The fit selects on the white-noise errors and never calibrates."""
    import skysub.photometry.aperture as aperture

    def no_calibration(*args, **kwargs):
        raise AssertionError("the zero-point fit must not calibrate its errors")

    monkeypatch.setattr(aperture, "calibrate", no_calibration)
    img, cat = _frame_with_stars(25.0, seed=3)
    res = fit_zeropoint(img, cat)
    assert res.source == "fit" and res.n >= 20
    assert res.value == pytest.approx(25.0, abs=max(4 * res.error, 0.005))
