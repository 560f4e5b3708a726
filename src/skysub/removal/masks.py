"""SNR-adaptive circular masks (Madarász et al. §2.4.4, eq. 1 and Table 3).

The hole radius of each source depends on how far it stands out of its surroundings::

    SNR = (F_peak - mu_bg) / sigma_bg                                   (eq. 1)

with ``F_peak`` the brightest valid pixel within ``source_radius`` of the position and
``mu_bg``, ``sigma_bg`` the location and scale of the valid pixels in the annulus
``annulus_in <= r < annulus_out`` -- by default robust ones (median, MAD-std: a neighbour in the
annulus must not shrink a bright source's hole), the paper's mean and std on request.
Six discrete radii by thresholds: ``radii[i]`` for
``thresholds[i-1] <= SNR < thresholds[i]`` (``radii[0]`` below the first threshold,
``radii[-1]`` at or above the last).  Configuration tables come from the ``[removal.masks]``
section of a configuration (presets ``inpaint-scanmap``, ``inpaint-parallel`` hold the paper's
Table 3; ``inpaint-generic`` scales the radii by the PSF FWHM).

PSF-aware growth (skysub's addition, ``wing_sigma``): a fixed table made for one PSF leaves the
outer structure of another in the map -- an Airy pattern's third ring still holds ~0.16 % of
the peak, a 1-sigma residual at SNR 600, far beyond the table's largest hole.  With a PSF
image and ``wing_sigma = k``, each hole grows to the smallest radius beyond which the PSF's
*envelope* (the largest PSF value at that radius or further out, relative to the peak) times
the source's peak amplitude ``F_peak - mu_bg`` stays below ``k`` times the map's pixel noise:
no wing left brighter than ``k`` sigma.  The noise is a map-wide robust estimate from pixel
differences (:func:`pixel_noise`), not eq. 1's annulus scatter, which a bright source's own
rings inflate.  The radius never shrinks below the table's and is capped at ``max_radius_px``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..image import Image, as_image
from ..stamps import _round_half_up, gather

#: The paper's Scan Map (1.6"/px) and Parallel (3.2"/px) tables (Table 3; §2.4.4 geometry).
SCANMAP = {"source_radius": 8.0, "annulus_in": 10.0, "annulus_out": 22.0,
           "thresholds": [4.0, 8.0, 13.0, 140.0, 300.0],
           "radii": {"blue": [5, 6, 7, 9, 11, 12], "green": [5, 6, 8, 10, 11, 13],
                     "red": [4, 6, 7, 8, 9, 10]}}
PARALLEL = {"source_radius": 4.0, "annulus_in": 8.0, "annulus_out": 18.0,
            "thresholds": [13.0, 20.0, 300.0, 590.0, 855.0],
            "radii": {"blue": [4, 5, 6, 7, 8, 9], "green": [4, 5, 7, 8, 9, 10],
                      "red": [4, 6, 7, 8, 9, 10]}}
#: generic table in units of the PSF FWHM: Scan Map blue (FWHM ~3.5 px) divided by 3.5
GENERIC_FWHM = {"source_radius": 2.3, "annulus_in": 2.9, "annulus_out": 6.3,
                "thresholds": [4.0, 8.0, 13.0, 140.0, 300.0],
                "radii": [1.45, 1.7, 2.0, 2.6, 3.15, 3.45]}


@dataclass(frozen=True)
class MaskTable:
    """SNR thresholds -> hole radius [px], with the SNR geometry [px].

    Attributes
    ----------
    thresholds : ascending SNR thresholds (n - 1 values)
    radii : hole radii [px] (n values, one per SNR range, ascending)
    source_radius : radius of the circle searched for the peak [px]
    annulus_in, annulus_out : annulus of mu_bg and sigma_bg [px]
    """

    thresholds: tuple[float, ...] = tuple(SCANMAP["thresholds"])
    radii: tuple[float, ...] = tuple(SCANMAP["radii"]["blue"])
    source_radius: float = 8.0
    annulus_in: float = 10.0
    annulus_out: float = 22.0
    names: tuple[str, ...] = field(default=("minimal", "focused", "small", "moderate", "large",
                                            "full"))
    #: PSF-aware growth (module doc): wings left below wing_sigma x noise; None = off
    wing_sigma: float | None = None
    #: cap of the grown radius [px] (never below the table's largest radius)
    max_radius_px: float = 24.0

    def __post_init__(self) -> None:
        t = np.asarray(self.thresholds, float)
        r = np.asarray(self.radii, float)
        if r.ndim != 1 or t.ndim != 1 or len(r) != len(t) + 1 or len(r) < 1:
            raise ConfigError(f"[removal.masks] needs len(radii) = len(thresholds) + 1, got "
                              f"{len(r)} radii and {len(t)} thresholds (a table laid over a "
                              f"preset's takes the thresholds it does not set from the "
                              f"preset: set both)")
        if np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
            raise ConfigError(f"[removal.masks] thresholds must increase, got {list(t)}")
        if np.any(r <= 0) or np.any(np.diff(r) < 0):
            raise ConfigError(f"[removal.masks] radii must be positive and non-decreasing, "
                              f"got {list(r)}")
        if self.wing_sigma is not None and not self.wing_sigma > 0:
            raise ConfigError(f"[removal.masks] wing_sigma must be positive, got "
                              f"{self.wing_sigma}")
        if not self.max_radius_px > 0:
            raise ConfigError(f"[removal.masks] max_radius_px must be positive, got "
                              f"{self.max_radius_px}")
        if not (0 < self.source_radius and 0 <= self.annulus_in < self.annulus_out):
            raise ConfigError("[removal.masks] needs source_radius > 0 and "
                              f"0 <= annulus_in < annulus_out, got {self.source_radius}, "
                              f"{self.annulus_in}, {self.annulus_out}")

    @property
    def max_radius(self) -> float:
        return float(max(self.radii))

    def as_card(self) -> dict[str, Any]:
        """The table as a model card records it (lengths in px; :meth:`from_config` reads it)."""
        return {"thresholds": list(self.thresholds), "radii": list(self.radii),
                "source_radius": self.source_radius, "annulus_in": self.annulus_in,
                "annulus_out": self.annulus_out, "units": "px",
                **({"wing_sigma": self.wing_sigma, "max_radius_px": self.max_radius_px}
                   if self.wing_sigma is not None else {})}

    def scaled(self, factor: float) -> MaskTable:
        """This table for a beam ``factor`` times wider: every radius and the SNR geometry
        multiplied by ``factor`` (``max_radius_px`` stays a pixel cap, as at inference)."""
        from dataclasses import replace

        f = float(factor)
        if not f > 0:
            raise ConfigError(f"mask table scale factor must be positive, got {factor}")
        if f == 1.0:
            return self
        return replace(self, radii=tuple(r * f for r in self.radii),
                       source_radius=self.source_radius * f, annulus_in=self.annulus_in * f,
                       annulus_out=self.annulus_out * f)

    @classmethod
    def for_training(cls, removal: dict[str, Any] | None, *,
                     psf_fwhm: float | None = None) -> MaskTable | None:
        """The table training cuts its holes with, from a ``[removal]`` section: its
        ``[removal.masks]`` with ``[removal.train.masks]`` laid over it; None without a
        ``[removal.train.masks]`` (training uses the removal table)."""
        r = dict(removal or {})
        over = dict(r.get("train", {}) or {}).get("masks")
        if over is None:
            return None
        return cls.from_config({**dict(r.get("masks", {}) or {}), **over}, psf_fwhm=psf_fwhm)

    def radius_for(self, snr: np.ndarray, psf: np.ndarray | None = None,
                   wing_snr: np.ndarray | None = None) -> np.ndarray:
        """Hole radius [px] for each SNR (NaN SNR -> the largest radius, to be safe); with a
        ``psf`` and ``wing_sigma`` set, grown until the PSF wings are below ``wing_sigma``
        (peak amplitude over noise ``wing_snr``, default ``snr``)."""
        snr = np.asarray(snr, float)
        idx = np.searchsorted(np.asarray(self.thresholds), snr, side="right")
        out = np.asarray(self.radii, float)[idx]
        out = np.where(np.isfinite(snr), out, self.max_radius)
        if psf is not None and self.wing_sigma is not None:
            ws = snr if wing_snr is None else np.asarray(wing_snr, float)
            grow = wing_radius(psf, np.where(np.isfinite(ws), ws, 0.0), self.wing_sigma)
            out = np.clip(np.maximum(out, grow), None, max(self.max_radius_px, self.max_radius))
        return out

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, *, band: str | None = None,
                    psf_fwhm: float | None = None) -> MaskTable:
        """Build from a ``[removal.masks]`` dict.

        Keys: ``thresholds``, ``radii`` (a list, or a table band -> list, chosen by ``band``
        or ``default_band``), ``source_radius``, ``annulus_in``, ``annulus_out`` and ``units``
        (``"px"`` or ``"fwhm"``: every length multiplied by ``psf_fwhm``, default from the
        section's ``psf_fwhm``).  An empty section gives the generic table for ``psf_fwhm``
        (3.5 px if unknown).
        """
        s = dict(section or {})
        if not s:
            s = dict(GENERIC_FWHM, units="fwhm")
        from ..config import check_keys

        check_keys(s, ("thresholds", "radii", "source_radius", "annulus_in", "annulus_out",
                       "units", "psf_fwhm", "default_band", "wing_sigma", "max_radius_px"),
                   "[removal.masks]")
        radii = s.get("radii", GENERIC_FWHM["radii"])
        if isinstance(radii, dict):
            key = band if band in radii else s.get("default_band", next(iter(radii)))
            if key not in radii:
                raise ConfigError(f"[removal.masks] radii has no band {key!r}; bands: "
                                  f"{', '.join(radii)}")
            radii = radii[key]
        units = s.get("units", "px")
        if units not in ("px", "fwhm"):
            raise ConfigError(f"[removal.masks] units must be 'px' or 'fwhm', got {units!r}")
        scale = 1.0
        if units == "fwhm":
            scale = float(psf_fwhm if psf_fwhm is not None else s.get("psf_fwhm", 3.5))
            if not scale > 0:
                raise ConfigError(f"PSF FWHM must be positive, got {scale}")
        base = GENERIC_FWHM if units == "fwhm" else SCANMAP
        try:
            return cls(thresholds=tuple(float(v) for v in s.get("thresholds",
                                                                 base["thresholds"])),
                       radii=tuple(float(v) * scale for v in radii),
                       source_radius=float(s.get("source_radius", base["source_radius"])) * scale,
                       annulus_in=float(s.get("annulus_in", base["annulus_in"])) * scale,
                       annulus_out=float(s.get("annulus_out", base["annulus_out"])) * scale,
                       wing_sigma=(None if s.get("wing_sigma") is None
                                   else float(s["wing_sigma"])),
                       max_radius_px=float(s.get("max_radius_px", 24.0)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[removal.masks]: {exc}") from None


def peak_snr(image: Image | np.ndarray, x: np.ndarray, y: np.ndarray, table: MaskTable, *,
             mask: np.ndarray | None = None, robust: bool = True) -> dict[str, np.ndarray]:
    """Eq. 1 for every source, vectorised: ``snr``, ``peak``, ``mu_bg``, ``sigma_bg``.

    ``robust`` (default): ``mu_bg`` and ``sigma_bg`` are the median and the MAD-based standard
    deviation of the annulus (equal to the mean and std for Gaussian noise); the paper's plain
    mean and std (``robust=False``) let a bright neighbour in the annulus inflate ``sigma_bg``,
    which drops the SNR of a bright source in a crowded field and gives it a hole far too
    small for its light.

    Masked/NaN pixels and pixels off the image are ignored; a source without valid annulus
    pixels (or with ``sigma_bg == 0``) gets SNR NaN (and therefore the largest mask).
    """
    img = as_image(image, mask)
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    n = len(x)
    ro = int(np.ceil(table.annulus_out)) + 1
    off = np.arange(-ro, ro + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    dx, dy = dx.ravel(), dy.ravel()
    out = {k: np.full(n, np.nan) for k in ("snr", "peak", "mu_bg", "sigma_bg")}
    chunk = 2048
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        xi, yi = _round_half_up(x[sl]), _round_half_up(y[sl])
        vals, valid = gather(img, xi, yi, dx, dy)
        with np.errstate(invalid="ignore"):
            r = np.hypot(dx[None] - (x[sl] - xi)[:, None], dy[None] - (y[sl] - yi)[:, None])
        src = valid & (r <= table.source_radius)
        ann = valid & (r >= table.annulus_in) & (r < table.annulus_out)
        peak = np.max(np.where(src, vals, -np.inf), axis=1)
        na = ann.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN
            a = np.where(ann, vals, np.nan)
            if robust:
                mu = np.nanmedian(a, axis=1)
                sd = 1.4826 * np.nanmedian(np.abs(a - mu[:, None]), axis=1)
            else:
                mu = np.nanmean(a, axis=1)
                sd = np.nanstd(a, axis=1)
            snr = (peak - mu) / sd
        bad = (na < 3) | ~np.isfinite(peak) | ~(sd > 0)
        out["snr"][sl] = np.where(bad, np.nan, snr)
        out["peak"][sl] = np.where(np.isfinite(peak), peak, np.nan)
        out["mu_bg"][sl] = mu
        out["sigma_bg"][sl] = sd
    return out


def psf_envelope(psf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(r, env)``: for each radius ``r`` [px] from the PSF centre (its brightest pixel), the
    largest PSF value at that radius or beyond, relative to the peak (non-increasing)."""
    p = np.asarray(psf, float)
    if p.ndim != 2 or not np.all(np.isfinite(p)) or not p.max() > 0:
        raise ConfigError("the PSF must be a finite 2-D image with a positive peak")
    cy, cx = np.unravel_index(np.argmax(p), p.shape)
    yy, xx = np.indices(p.shape)
    r = np.hypot(xx - cx, yy - cy).ravel()
    v = (p / p.max()).ravel()
    order = np.argsort(r)[::-1]
    env = np.maximum.accumulate(v[order])[::-1]  # max over radii >= r (sorted ascending)
    return r[order][::-1], env


def wing_radius(psf: np.ndarray, snr: np.ndarray, k: float) -> np.ndarray:
    """Smallest radius [px] beyond which ``snr x envelope(r) < k`` (see the module doc).

    The envelope is measured out to the PSF image's edge; a PSF whose wings are still above
    ``k / snr`` there gets the edge radius (give a larger PSF image for brighter sources)."""
    r, env = psf_envelope(psf)
    snr = np.asarray(snr, float)
    # env is non-increasing along r; the first index where env < k / snr
    thresh = np.where(snr > 0, k / np.maximum(snr, 1e-300), np.inf)
    idx = np.searchsorted(-env, -thresh, side="right")  # first env < thresh
    idx = np.clip(idx, 0, len(r) - 1)
    # the hole must cover every pixel at or inside the last radius where env >= thresh
    out = np.where(idx > 0, r[np.maximum(idx - 1, 0)], 0.0)
    return out


def mask_radii(image: Image | np.ndarray, x, y, table: MaskTable, *,
               mask: np.ndarray | None = None, robust: bool = True,
               psf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(radius [px], snr)`` of each source's hole (see :func:`peak_snr`); ``psf`` enables the
    PSF-aware growth when the table has ``wing_sigma``."""
    st = peak_snr(image, x, y, table, mask=mask, robust=robust)
    wing_snr = None
    if psf is not None and table.wing_sigma is not None:
        wing_snr = (st["peak"] - st["mu_bg"]) / pixel_noise(as_image(image, mask))
    return table.radius_for(st["snr"], psf, wing_snr), st["snr"]


def pixel_noise(image: Image) -> float:
    """Robust per-pixel noise of a map from differences of horizontally adjacent valid pixels
    (MAD-std / sqrt 2): insensitive to extended emission and to the few source pixels.  For
    beam-correlated noise it is an underestimate, which only makes holes larger (safer)."""
    d = image.data
    ok = ~image.mask
    diff = (d[:, 1:] - d[:, :-1])[ok[:, 1:] & ok[:, :-1]]
    if diff.size < 10:
        return float("nan")
    if diff.size > 2_000_000:  # a regular subsample is plenty for a median
        diff = diff[:: diff.size // 1_000_000]
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def hole_stack(size: int, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Boolean holes (n, size, size), True inside the circle of ``radius`` around
    ``(size // 2 + dx, size // 2 + dy)`` (pixel centres within the radius)."""
    c = size // 2
    g = np.arange(size) - c
    ddx = g[None, None, :] - np.asarray(dx, float)[:, None, None]
    ddy = g[None, :, None] - np.asarray(dy, float)[:, None, None]
    return ddx * ddx + ddy * ddy <= np.asarray(radius, float)[:, None, None] ** 2
