"""Aperture fluxes of catalogued sources with their catalogued neighbours masked: the third
zero-point fit of :func:`skysub.photometry.zeropoint.fit_zeropoint`, for deep or crowded frames
where too few sources are isolated.

Each catalogued source ``j`` owns a disc of radius ``R_j = NEIGHBOUR_R50 x r50_j`` scaled by
its brightness relative to the measured source ``i`` (``(f_j / f_i)^(1/4)``, clipped to
``BRIGHTNESS_CLIP``; fluxes from the catalogue magnitudes): a bright neighbour's wings get a
wider disc, a faint one's a narrower.  Where two discs overlap, a pixel belongs to the source
it is closer to in units of its radius (``d_j / R_j < d_i / R_i``).  In the measured source's
apertures the pixels a neighbour owns (and masked pixels) are replaced by their mirror image
through the source's centre -- SExtractor's ``MASK_TYPE CORRECT`` -- when that pixel is free;
a pixel whose mirror is not free either takes the mean of the free pixels of its 1-px ring
around the source (at least ``MIN_RING_FREE`` of the ring free, else the source is not used);
a source with more than ``MAX_REPLACED`` of its outer aperture replaced is not used.  The
background is the median of the free pixels (no neighbour's, not masked) of an annulus around
the source.  The curve-of-growth check of the strict fit applies unchanged to the corrected
fluxes; the fit's error carries a systematic term (``MASKED_SYSTEMATIC`` in
:mod:`.zeropoint`) measured on simulated deep fields.
"""

from __future__ import annotations

import numpy as np

from ..image import Image

#: a catalogued source's disc radius in units of its catalogue r50 (a Moffat-4 star of FWHM
#: 3.5 px has r50 = 2.05 px: 4 r50 holds 99.3 % of its light)
NEIGHBOUR_R50 = 4.0
#: smallest disc radius [px] (catalogues with r50 = 0 for stars or unresolved sources)
MIN_RADIUS = 2.0
#: range of the brightness factor (f_j / f_i)^(1/4) on a disc radius
BRIGHTNESS_CLIP = (0.5, 3.0)
#: most of the outer aperture area that may be replaced (mirrored or ring-filled pixels)
MAX_REPLACED = 0.5
#: a pixel without a free mirror takes the mean of the free pixels of its 1-px ring around
#: the source when at least this fraction of the ring is free (else the source is not used)
MIN_RING_FREE = 0.3
#: sources measured per block (bounds the memory of the per-pair disc stacks)
BLOCK = 16
#: fewest free annulus pixels for a background
MIN_BKG_PIXELS = 30


def disc_radius(r50_self: np.ndarray, flux_self: np.ndarray, flux_other: np.ndarray,
                r_min: float) -> np.ndarray:
    """Disc radius [px] of a source of catalogue ``r50_self`` next to a source of flux
    ``flux_other`` (:data:`NEIGHBOUR_R50`, :data:`BRIGHTNESS_CLIP`, at least ``r_min``)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        k = np.clip((flux_self / flux_other) ** 0.25, *BRIGHTNESS_CLIP)
    k = np.where(np.isfinite(k), k, 1.0)
    return np.maximum(NEIGHBOUR_R50 * r50_self, r_min) * k


def masked_fluxes(img: Image, x: np.ndarray, y: np.ndarray, mag: np.ndarray, r50: np.ndarray,
                  targets: np.ndarray, r0: float, r1: float, bkg_in: float, bkg_out: float
                  ) -> dict[str, np.ndarray]:
    """Fluxes in apertures ``r0`` and ``r1`` of the catalogue sources ``targets`` (indices into
    ``x, y, mag, r50``: every catalogued source, the neighbours), neighbours masked and
    replaced by mirrored pixels (module docstring).

    Returns ``f0, f1, e1`` (image units; e1 the white-noise error of f1, with the sources' shot
    noise where the gain is known), ``usable`` (bool: every replaced pixel had a free mirror
    or a ring mean, at most :data:`MAX_REPLACED` replaced, a finite background) and
    ``replaced`` (fraction of the outer aperture replaced), all of shape ``(len(targets),)``.
    """
    from scipy.spatial import cKDTree

    from ..stamps import _round_half_up, gather
    from ..stats import sigma68
    from .aperture import overlap_weights

    r50 = np.where(np.isfinite(r50) & (r50 > 0), r50, 0.0)
    with np.errstate(over="ignore"):
        fcat = 10.0 ** (-0.4 * (mag - np.nanmedian(mag)))  # relative catalogue fluxes
    n_t = len(targets)
    out = {k: np.full(n_t, np.nan) for k in ("f0", "f1", "e1", "replaced")}
    out["usable"] = np.zeros(n_t, bool)
    if n_t == 0:
        return out
    half = int(np.ceil(bkg_out)) + 1  # the stamp holds the background annulus
    grid = np.arange(-half, half + 1)
    k_ap = int(np.ceil(r1)) + 1  # the apertures' sub-stamp: offsets -k_ap .. k_ap
    inner = slice(half - k_ap, half + k_ap + 1)
    tree = cKDTree(np.column_stack([x, y]))
    # a neighbour's disc can touch the stamp from this far (its largest brightness factor)
    r_max = BRIGHTNESS_CLIP[1] * np.maximum(NEIGHBOUR_R50 * r50, MIN_RADIUS)
    reach = half * np.sqrt(2.0) + float(r_max.max())
    gain = img.meta.source_gain
    for lo in range(0, n_t, BLOCK):
        t = targets[lo:lo + BLOCK]
        m = len(t)
        xi, yi = _round_half_up(x[t]), _round_half_up(y[t])
        fx, fy = x[t] - xi, y[t] - yi
        vals, valid = gather(img, xi, yi, grid[None, :], grid[:, None])
        ddx = grid[None, None, :] - fx[:, None, None]
        ddy = grid[None, :, None] - fy[:, None, None]
        d_t = np.hypot(ddx, ddy)  # each pixel's distance from the target's centre
        owned = np.zeros(vals.shape, bool)  # pixels a neighbour owns
        near = tree.query_ball_point(np.column_stack([x[t], y[t]]), r=reach)
        pi = np.concatenate([np.full(len(nb), k) for k, nb in enumerate(near)]).astype(int)
        pj = np.concatenate([np.asarray(nb, int) for nb in near]).astype(int)
        ti = t[pi]
        r_j = disc_radius(r50[pj], fcat[pj], fcat[ti], MIN_RADIUS)
        sep = np.hypot(x[pj] - x[ti], y[pj] - y[ti])
        keep = (pj != ti) & (sep - r_j < half * np.sqrt(2.0))
        pi, pj, ti, r_j = pi[keep], pj[keep], ti[keep], r_j[keep]
        if pi.size:
            r_i = disc_radius(r50[ti], fcat[ti], fcat[pj], MIN_RADIUS)
            ox = (x[pj] - xi[pi])[:, None, None]
            oy = (y[pj] - yi[pi])[:, None, None]
            d_j = np.hypot(grid[None, None, :] - ox, grid[None, :, None] - oy)
            own = (d_j <= r_j[:, None, None]) & (d_j * r_i[:, None, None]
                                                  < d_t[pi] * r_j[:, None, None])
            np.logical_or.at(owned, pi, own)
        bad = owned | ~valid
        # background: median and scatter of the free pixels of the annulus
        ann = (d_t >= bkg_in) & (d_t < bkg_out)
        b = np.full(m, np.nan)
        pix_std = np.full(m, np.nan)
        n_b = np.zeros(m)
        for k in range(m):  # a median per target (BLOCK of them): no vectorised nanmedian gain
            v = vals[k][ann[k] & ~bad[k]]
            n_b[k] = v.size
            if v.size >= MIN_BKG_PIXELS:
                b[k] = float(np.median(v))
                pix_std[k] = float(sigma68(v))
        b_err = 1.2533 * pix_std / np.sqrt(np.maximum(n_b, 1))  # error of a median
        # the apertures, on the central sub-stamp
        vals, bad, d_t = vals[:, inner, inner], bad[:, inner, inner], d_t[:, inner, inner]
        g_in = grid[inner]
        # mirror of stamp pixel (row a, column c) through the centre (fy, fx)
        cols = _round_half_up(2 * fx[:, None] - g_in[None, :]) + k_ap  # (m, k)
        rows = _round_half_up(2 * fy[:, None] - g_in[None, :]) + k_ap
        inside_c = (cols >= 0) & (cols < g_in.size)
        inside_r = (rows >= 0) & (rows < g_in.size)
        cc = np.clip(cols, 0, g_in.size - 1)
        rr = np.clip(rows, 0, g_in.size - 1)
        kk = np.arange(m)[:, None, None]
        mirror_vals = vals[kk, rr[:, :, None], cc[:, None, :]]
        mirror_bad = bad[kk, rr[:, :, None], cc[:, None, :]] | ~(
            inside_r[:, :, None] & inside_c[:, None, :])
        w1 = overlap_weights(fx, fy, r1, 1.0, 0.0, k_ap)
        w0 = overlap_weights(fx, fy, r0, 1.0, 0.0, k_ap)
        data = np.where(bad, np.where(mirror_bad, 0.0, mirror_vals), vals)
        # pixels without a free mirror: the mean of the free pixels of their 1-px ring
        nr = k_ap + 2
        ring = np.minimum(np.floor(d_t).astype(np.int64), nr - 1)
        flat = (np.arange(m)[:, None, None] * nr + ring).ravel()
        free = (~bad).ravel()
        n_free = np.bincount(flat, weights=free, minlength=m * nr)
        n_all = np.bincount(flat, minlength=m * nr)
        s_free = np.bincount(flat, weights=np.where(free, vals.ravel(), 0.0), minlength=m * nr)
        with np.errstate(invalid="ignore", divide="ignore"):
            ring_mean = np.where(n_free > 0, s_free / n_free, 0.0).reshape(m, -1)
        ring_ok = (n_free >= MIN_RING_FREE * np.maximum(n_all, 1)).reshape(m, -1)
        flat_ring = ring.reshape(m, -1)
        rm = np.take_along_axis(ring_mean, flat_ring, 1).reshape(vals.shape)
        rok = np.take_along_axis(ring_ok, flat_ring, 1).reshape(vals.shape)
        filled = bad & mirror_bad
        data = np.where(filled, rm, data) - b[:, None, None]
        lost = filled & ~rok & (w1 > 0)
        a1 = w1.sum(axis=(1, 2))
        a_rep = (w1 * bad).sum(axis=(1, 2))
        f1 = (w1 * data).sum(axis=(1, 2))
        f0 = (w0 * data).sum(axis=(1, 2))
        # replaced pixels repeat their mirror's noise: (2 sigma)^2 for each pair, not 2 sigma^2
        var = (pix_std ** 2 * (a1 + 2.0 * a_rep) + (a1 * b_err) ** 2
               + np.clip(f1, 0.0, None) / gain)
        out["f0"][lo:lo + m], out["f1"][lo:lo + m] = f0, f1
        out["e1"][lo:lo + m] = np.sqrt(var)
        out["replaced"][lo:lo + m] = a_rep / a1
        out["usable"][lo:lo + m] = (~lost.any(axis=(1, 2)) & (a_rep / a1 <= MAX_REPLACED)
                                    & np.isfinite(b) & np.isfinite(f1))
    return out
