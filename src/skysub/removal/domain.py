"""Is a map inside the inpainting model's training domain?  (``skysub remove`` warns if not.)

A network trained on one family of fields fills holes in another family less well: on maps
skysub's generator did not make, the shipped model's fluxes read a few per cent low.  Three
statistics of a map say most about how far it is from the training fields, and all three can be
measured on any map with its sources still in it:

* ``noise_fraction``: the pixel noise (robust, from differences of adjacent pixels, which
  neither extended emission nor compact sources inflate) over the robust (MAD) scatter of the
  map: ~1 for a noise-dominated map, small for bright structured emission;
* ``ps_slope``: the power-law index ``beta`` of the azimuthally averaged power spectrum,
  ``P(k) ~ k^-beta``, fitted over ``PS_K_RANGE`` cycles/px (Hann window; masked / NaN pixels
  at the mean);
* ``beam_fwhm_px``: the beam's FWHM in pixels (from the PSF image, the given FWHM, or the FITS
  header's ``BMAJ``/``BMIN`` and pixel scale).

:func:`domain_of` measures the range of the first two over the model's calibration fields (the
test split of its training data, the same generator) and records the training beams: the
card's ``domain``.  :func:`check_domain` compares a map with it and returns one sentence per
statistic that lies outside the range widened by the recorded tolerance.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: wavenumber range [cycles/px] of the power-spectrum slope fit
PS_K_RANGE = (0.01, 0.08)
#: tolerances of the check: factor on noise_fraction, absolute on the slope, factor on the FWHM
TOLERANCE = {"noise_fraction": 1.5, "ps_slope": 0.3, "beam_fwhm_px": 1.15}
STATS = ("noise_fraction", "ps_slope", "beam_fwhm_px")


def pixel_noise(data: np.ndarray) -> float:
    """Robust per-pixel noise: MAD-std of horizontal adjacent-pixel differences / sqrt 2."""
    d = np.asarray(data, float)
    diff = (d[:, 1:] - d[:, :-1]).ravel()
    diff = diff[np.isfinite(diff)]
    if diff.size < 10:
        return float("nan")
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def psf_fwhm_of(psf: np.ndarray, oversample: int = 5) -> float:
    """FWHM [px] of a PSF image: the diameter of the circle with the area above half its peak
    (measured on a bilinear ``oversample`` x resampling)."""
    from scipy.ndimage import zoom

    p = np.asarray(psf, float)
    fine = zoom(p, oversample, order=1)
    area = np.count_nonzero(fine >= 0.5 * fine.max()) / oversample ** 2
    return float(2.0 * np.sqrt(area / np.pi))


def header_beam_px(header: Any, wcs: Any = None) -> float | None:
    """Beam FWHM [px] from FITS ``BMAJ``/``BMIN`` [deg] and the pixel scale (``CDELT2`` or the
    WCS), geometric mean of the axes; None when the header lacks them."""
    if header is None or "BMAJ" not in header:
        return None
    try:
        bmaj = float(header["BMAJ"])
        bmin = float(header.get("BMIN", bmaj))
        scale = None
        if wcs is not None and getattr(wcs, "has_celestial", False):
            from astropy.wcs.utils import proj_plane_pixel_scales

            scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial))))
        if not scale:
            scale = abs(float(header.get("CDELT2", header.get("CDELT1"))))
    except (TypeError, ValueError, KeyError):
        return None
    if not (scale > 0 and bmaj > 0 and bmin > 0):
        return None
    return float(np.sqrt(bmaj * bmin) / scale)


def map_statistics(data: np.ndarray, *, beam_fwhm_px: float | None = None,
                   mask: np.ndarray | None = None) -> dict[str, float]:
    """The module doc's statistics of one map (NaN / ``mask`` pixels ignored)."""
    from ..metrics import power_spectrum

    d = np.asarray(data, float)
    bad = ~np.isfinite(d) if mask is None else (np.asarray(mask, bool) | ~np.isfinite(d))
    good = d[~bad]
    out = {"noise_fraction": float("nan"), "ps_slope": float("nan"),
           "beam_fwhm_px": float(beam_fwhm_px) if beam_fwhm_px else float("nan")}
    if good.size < 100:
        return out
    noise = pixel_noise(np.where(bad, np.nan, d))
    spread = 1.4826 * float(np.median(np.abs(good - np.median(good))))
    if spread > 0 and np.isfinite(noise):
        out["noise_fraction"] = noise / spread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k, p = power_spectrum(d, mask=bad, window="hann")
    sel = (k >= PS_K_RANGE[0]) & (k <= PS_K_RANGE[1]) & (p > 0)
    if sel.sum() >= 3:
        out["ps_slope"] = float(-np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0])
    return out


def domain_of(sims: list, beams: list[float], *, quantiles: tuple[float, float] = (1, 99)
              ) -> dict[str, Any]:
    """The card's ``domain``: the ``quantiles`` range of ``noise_fraction`` and ``ps_slope`` over
    the source-free truths of ``sims`` (the emission the network learnt: compact sources would
    flatten the spectrum of any map; :func:`check_image` measures a map after its sources are
    removed), the range of the training ``beams`` [px], and :data:`TOLERANCE`."""
    stats = [map_statistics(s.truth) for s in sims]
    dom: dict[str, Any] = {}
    for key in ("noise_fraction", "ps_slope"):
        v = np.array([s[key] for s in stats], float)
        v = v[np.isfinite(v)]
        if v.size:
            lo, hi = np.percentile(v, quantiles)
            dom[key] = [round(float(lo), 4), round(float(hi), 4)]
    b = [float(v) for v in beams if v and np.isfinite(v)]
    if b:
        dom["beam_fwhm_px"] = [round(min(b), 3), round(max(b), 3)]
    dom["tolerance"] = dict(TOLERANCE)
    dom["n_fields"] = len(sims)
    dom["quantiles"] = list(quantiles)
    dom["ps_k_range"] = list(PS_K_RANGE)
    return dom


def _outside(key: str, value: float, rng: list[float], tol: float) -> bool:
    lo, hi = rng
    if key == "ps_slope":
        return value < lo - tol or value > hi + tol
    return value < lo / tol or value > hi * tol


def check_domain(stats: dict[str, float], domain: dict[str, Any] | None) -> list[str]:
    """One sentence per statistic of ``stats`` (:func:`map_statistics`) outside the card's
    ``domain`` (widened by its tolerance); [] when all lie inside or the card has no domain."""
    if not domain:
        return []
    tol = {**TOLERANCE, **domain.get("tolerance", {})}
    names = {"noise_fraction": "pixel noise / map scatter", "ps_slope": "power-spectrum slope",
             "beam_fwhm_px": "beam FWHM [px]"}
    out = []
    for key in STATS:
        v = stats.get(key)
        rng = domain.get(key)
        if rng is None or v is None or not np.isfinite(v):
            continue
        if _outside(key, float(v), rng, float(tol[key])):
            span = f"{rng[0]:.3g}" if rng[0] == rng[1] else f"{rng[0]:.3g}-{rng[1]:.3g}"
            out.append(f"{names[key]} {v:.3g} (training fields: {span})")
    return out


def domain_warning(name: str, problems: list[str], model: str) -> str:
    """The warning ``skysub remove`` prints for a map outside the model's domain."""
    return (f"warning: {name} lies outside the training domain of {model}: "
            + "; ".join(problems)
            + ".  Its removed fluxes may be biased: measure them on your map with "
              "`skysub evaluate removal --maps MAP --catalog CAT`, and calibrate or fine-tune "
              "on it (`skysub train inpaint --maps MAP --catalog CAT --init inpaint-default "
              "--output my.pt`; docs/removal.md, 'Your own maps').")


def map_beam(image: Any, *, psf: np.ndarray | None = None, psf_fwhm: float | None = None,
             default: float | None = None) -> float | None:
    """The map's beam FWHM [px]: of the PSF image, else ``psf_fwhm``, else the FITS header's
    ``BMAJ``/``BMIN``, else ``default``."""
    if psf is not None:
        return psf_fwhm_of(psf)
    if psf_fwhm is not None:
        return float(psf_fwhm)
    beam = header_beam_px(getattr(image, "header", None), getattr(image, "wcs", None))
    return beam if beam is not None else default


def check_image(image: Any, result: Any = None, *, psf: np.ndarray | None = None,
                psf_fwhm: float | None = None, card: dict[str, Any] | None = None
                ) -> list[str]:
    """:func:`check_domain` of a map (an :class:`skysub.image.Image`) against the card of the
    model that removed its sources (``result.extra["card"]`` of
    :func:`skysub.removal.remove_sources`, or ``card``), measured on the map with its sources
    removed (``result.image``; the map itself without a result).  A card without a ``domain``
    (made before it) gives []."""
    card = card if card is not None else (result.extra.get("card") or {} if result else {})
    domain = card.get("domain")
    if not domain:
        return []
    data = np.where(image.mask, np.nan, result.image if result is not None else image.data)
    stats = map_statistics(data, beam_fwhm_px=map_beam(image, psf=psf, psf_fwhm=psf_fwhm))
    return check_domain(stats, domain)
