"""SExtractor-style mesh background map, computed by ``sep`` (SExtractor's own C code).

The image is cut into a grid of ``box_size`` boxes; in each box the pixels are clipped
(first at mean +- 2 sigma, then iteratively at median +- 3 sigma on a histogram) and the
background is SExtractor's mode estimate ``2.5 median - 1.5 mean`` (the median when
``|mean - median| >= 0.3 sigma``); boxes with fewer than half their pixels valid are replaced by
the nearest valid boxes; the grid is median filtered over ``filter_size`` boxes and interpolated
to full resolution with a bicubic spline (SPEC §1, "mesh background map").

We call :class:`sep.Background` rather than re-implementing this because sep *is* SExtractor's
background code (Bertin's ``back.c``) packaged as a library: the maps equal SExtractor's
BACKGROUND / BACKGROUND_RMS check images bit for bit (tested on SExtractor's reference images),
and it runs in C (a 4096 x 2048 CCD takes a fraction of a second).  sep refuses non-native byte
order and wants a float array plus a mask: :class:`MeshBackground` converts the data to native
float64 (via :class:`skysub.image.Image`) and hands sep the image's mask (True = bad), with
masked pixels set to 0 so that no NaN reaches the C code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .. import flags as F
from ..errors import ConfigError, InputError
from ..image import Image, as_image, image_method
from ..stamps import _round_half_up, check_positions
from .base import BackgroundResult

#: sd of SExtractor's mode ``2.5 med - 1.5 mean`` of n Gaussian values, in units of sigma/sqrt(n):
#: Var = (2.5^2 pi/2 - 2 * 2.5 * 1.5 + 1.5^2) sigma^2 / n  (Cov(mean, median) = sigma^2 / n).
K_MODE = float(np.sqrt(6.25 * np.pi / 2 - 7.5 + 2.25))  # = 2.137

#: std of a unit Gaussian truncated at +-3 sigma: sep's box sigma is a 3-sigma-clipped std and
#: underestimates the Gaussian sigma by this factor.
CLIP3_STD = 0.98658

#: sep discards a box with fewer valid pixels than this fraction (BACK_MINGOODFRAC).
MIN_GOOD_FRACTION = 0.5


@lru_cache(maxsize=64)
def median_variance_factor(m: int) -> float:
    """Variance of the median of ``m`` (odd) independent unit Gaussians.

    Exact, by integrating the density of the middle order statistic:
    ``f(x) = m! / ((k-1)!)^2 Phi^(k-1) (1 - Phi)^(k-1) phi`` with ``k = (m + 1) / 2``.
    1 for m = 1; 0.449 for 3; 0.166 for 9; tends to pi / (2 m).
    """
    from scipy import integrate, special, stats

    m = int(m)
    if m < 1 or m % 2 == 0:
        raise InputError(f"median_variance_factor needs an odd m >= 1, got m={m}")
    if m == 1:
        return 1.0
    k = (m + 1) // 2
    logc = special.gammaln(m + 1) - 2 * special.gammaln(k)

    def integrand(x: float) -> float:
        return x * x * np.exp(logc + (k - 1) * (stats.norm.logcdf(x) + stats.norm.logsf(x))
                              + stats.norm.logpdf(x))

    val, _ = integrate.quad(integrand, -np.inf, np.inf)
    return float(val)


def _pair(value, name: str) -> tuple[int, int]:
    """``value`` as (along x, along y) positive integers."""
    vals = np.atleast_1d(np.asarray(value))
    if vals.ndim != 1 or len(vals) not in (1, 2):
        raise InputError(f"{name} must be an integer or a pair (x, y) of integers, got {value!r}")
    if len(vals) == 1:
        vals = np.repeat(vals, 2)
    out = []
    for v in vals:
        if not (np.issubdtype(np.asarray(v).dtype, np.number) and float(v) == int(v)
                and int(v) >= 1):
            raise InputError(f"{name} must be a positive integer (or a pair of them), "
                             f"got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def _off_image(shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ny, nx = shape
    with np.errstate(invalid="ignore"):
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    return ~inside


@dataclass
class _Mesh:
    back: np.ndarray  # full-resolution background map, float64
    rms: np.ndarray  # full-resolution rms map, float64
    n_valid: np.ndarray  # (nby, nbx) valid pixels per box
    gain: np.ndarray  # (nby, nbx) sqrt(v(m) * <1/n>) per node: bkg_err = K * rms/0.987 * gain
    ok: bool  # at least one box had enough valid pixels


class MeshBackground:
    """SExtractor's mesh background (via :class:`sep.Background`) as a skysub estimator.

    Parameters
    ----------
    box_size : int or (int, int)
        Mesh box size in pixels (SExtractor BACK_SIZE); a pair is (along x, along y).
    filter_size : int or (int, int)
        Median-filter size in boxes (BACK_FILTERSIZE), odd; 1 = no filtering.
    filter_threshold : float
        Only filter boxes whose value differs from the filtered one by more than this
        (BACK_FILTERTHRESH, image units); 0 = always filter.
    name : str
        Label used in output tables.

    Notes
    -----
    **Error model.**  ``bkg_err`` is the 1-sigma error of the mesh estimate itself:

    ``bkg_err = K_MODE * (rms / 0.98658) * sqrt(v(m) * <1 / n_valid>)``

    - ``K_MODE = sqrt(25 pi / 8 - 21 / 4) = 2.137``: the error of SExtractor's mode
      ``2.5 median - 1.5 mean`` of ``n`` Gaussian pixels is ``2.137 sigma / sqrt(n)`` (larger than
      the median's ``sqrt(pi/2) = 1.25``, because mean and median are correlated);
    - ``rms / 0.98658``: sep's rms is a 3-sigma-clipped std, 1.3 % below the Gaussian sigma;
    - ``n_valid``: unmasked pixels of a box (boxes sep rejects inherit the value of the nearest
      valid box, as sep does with the background);
    - ``v(m)``: variance factor of the median of ``m`` independent values
      (:func:`median_variance_factor`), ``m`` = boxes in the median-filter window of the node.
      sep shrinks the window symmetrically at the grid border (an edge node is filtered over
      ``1 x 3`` boxes, a corner node not at all), so edge and corner nodes have larger errors;
      ``<1/n_valid>`` is averaged over that window.  With ``filter_threshold > 0`` the filter may
      not act and ``v(m) = 1`` is used (conservative).

    The per-node factor is bilinearly interpolated between box centres.  The spline
    interpolation between nodes and the correlation of neighbouring filtered nodes are
    neglected.  Measured on flat Gaussian skies (``tests/test_mesh.py``): sigma68 of
    ``(bkg - truth) / bkg_err`` is 0.96 (box 32, filter 3), 1.05 (64, 3), 1.00 (32, 5), 0.88
    (no filter: the spline then averages independent nodes between box centres).  On integer
    Poisson data with few counts (~100 per pixel) sep's histogram bins are finer than the
    integer spacing and the model is off by up to a factor 2 in either direction.

    **Mode versus mean.**  The mode estimator targets the peak of the pixel distribution, not its
    mean: on a Poisson sky the mode lies ~0.5 count below the mean (Pearson: mean - mode ~
    3 (mean - median) = 3 x 1/6).  Negligible for a sky of thousands of counts per pixel
    (1e-4 relative), but comparable to ``bkg_err`` for a single frame; photometry that needs the
    mean sky should use an annulus mean.

    **Flags.**  OFF_IMAGE (values NaN) for positions outside the image, MASKED when the source
    pixel is masked, EDGE within ``box_size / 2`` of an image edge (where sep extrapolates the
    spline beyond the outermost box centres), NO_DATA (values NaN) when no box of the image has
    half its pixels valid.
    """

    #: names of the two maps :meth:`background_map` returns (FITS EXTNAMEs for products)
    map_names = ("BACKGROUND", "RMS")

    def __init__(self, box_size: int | tuple[int, int] = 64,
                 filter_size: int | tuple[int, int] = 3, *, filter_threshold: float = 0.0,
                 name: str = "mesh") -> None:
        self.box_size = _pair(box_size, "box_size")
        self.filter_size = _pair(filter_size, "filter_size")
        if any(f % 2 == 0 for f in self.filter_size):
            raise InputError(f"filter_size must be odd (1 = no filtering), got {filter_size!r}")
        if not (np.isfinite(filter_threshold) and filter_threshold >= 0):
            raise InputError(f"filter_threshold must be >= 0, got {filter_threshold!r}")
        self.filter_threshold = float(filter_threshold)
        self.name = name

    def __repr__(self) -> str:
        def one(p):
            return p[0] if p[0] == p[1] else p

        return (f"MeshBackground(box_size={one(self.box_size)!r}, "
                f"filter_size={one(self.filter_size)!r}, "
                f"filter_threshold={self.filter_threshold!r}, name={self.name!r})")

    @classmethod
    def from_config(cls, section: dict) -> MeshBackground:
        """Build from a TOML ``[mesh]`` section (keys ``box_size``, ``filter_size``,
        ``filter_threshold``, ``name``)."""
        allowed = {"box_size", "filter_size", "filter_threshold", "name"}
        unknown = set(section) - allowed
        if unknown:
            raise ConfigError(f"[mesh] configuration: unknown key(s) {sorted(unknown)}; "
                              f"expected some of {sorted(allowed)}")
        return cls(**section)

    # -- the map ------------------------------------------------------------------------------
    def _maps(self, img: Image) -> tuple[np.ndarray, np.ndarray]:
        """sep's full-resolution background and rms maps.

        Fast path: with nothing masked the data go to sep as they are (no copy, no mask),
        which keeps skysub within a few per cent of a bare ``sep.Background`` call."""
        import sep

        bw, bh = self.box_size
        fw, fh = self.filter_size
        if img.mask.any():
            # masked pixels zeroed so that no NaN reaches C (sep skips them through the mask)
            data = np.ascontiguousarray(np.where(img.mask, 0.0, img.data), dtype=np.float64)
            mask = np.ascontiguousarray(img.mask, dtype=bool)
        else:
            data, mask = np.ascontiguousarray(img.data, dtype=np.float64), None
        bkg = sep.Background(data, mask=mask, bw=bw, bh=bh, fw=fw, fh=fh,
                             fthresh=self.filter_threshold)
        return bkg.back(dtype=np.float64), bkg.rms(dtype=np.float64)

    def _box_counts(self, img: Image) -> tuple[np.ndarray, np.ndarray]:
        """(valid pixels, pixels) per mesh box on sep's grid (nbx = (nx - 1) // bw + 1, the
        last box partial)."""
        bw, bh = self.box_size
        ny, nx = img.shape
        nbx, nby = (nx - 1) // bw + 1, (ny - 1) // bh + 1
        wx = np.minimum(bw, nx - bw * np.arange(nbx))
        wy = np.minimum(bh, ny - bh * np.arange(nby))
        n_area = wy[:, None] * wx[None, :]
        if not img.mask.any():
            return n_area.astype(float), n_area
        bad = np.add.reduceat(np.add.reduceat(img.mask, bh * np.arange(nby), axis=0,
                                              dtype=np.int64), bw * np.arange(nbx), axis=1)
        return (n_area - bad).astype(float), n_area

    def _run(self, img: Image) -> _Mesh:
        back, rms = self._maps(img)
        n_valid, n_area = self._box_counts(img)
        nby, nbx = n_valid.shape
        good = n_valid >= MIN_GOOD_FRACTION * n_area
        if not good.any():
            return _Mesh(back, rms, n_valid, np.full((nby, nbx), np.nan), False)
        inv_n = np.where(good, 1.0 / np.maximum(n_valid, 1.0), np.nan)
        if not good.all():  # rejected boxes take the nearest valid box (as sep does)
            from scipy.ndimage import distance_transform_edt

            _, (iy, ix) = distance_transform_edt(~good, return_indices=True)
            inv_n = inv_n[iy, ix]
        gain = self._filter_factor(inv_n)
        return _Mesh(back, rms, n_valid, gain, True)

    def _filter_factor(self, inv_n: np.ndarray) -> np.ndarray:
        """sqrt(v(m) <1/n>) per node over sep's symmetric, border-shrunk filter window."""
        nby, nbx = inv_n.shape
        hx, hy = self.filter_size[0] // 2, self.filter_size[1] // 2
        jx, jy = np.arange(nbx), np.arange(nby)
        ax = np.minimum(np.minimum(hx, jx), nbx - 1 - jx)  # half-window per node, as sep
        ay = np.minimum(np.minimum(hy, jy), nby - 1 - jy)
        # window means of 1/n from an integral image
        c = np.zeros((nby + 1, nbx + 1))
        c[1:, 1:] = inv_n.cumsum(0).cumsum(1)
        y0, y1 = (jy - ay)[:, None], (jy + ay + 1)[:, None]
        x0, x1 = (jx - ax)[None, :], (jx + ax + 1)[None, :]
        m = (2 * ay + 1)[:, None] * (2 * ax + 1)[None, :]
        mean_inv = (c[y1, x1] - c[y0, x1] - c[y1, x0] + c[y0, x0]) / m
        if self.filter_threshold > 0:
            v = np.ones_like(mean_inv)
        else:
            v = np.vectorize(median_variance_factor, otypes=[float])(m)
        return np.sqrt(v * mean_inv)

    @image_method
    def background_map(self, image: Image | np.ndarray, mask: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution background and rms maps.

        Parameters
        ----------
        image : Image or 2-D array (any byte order)
        mask : bool array, optional
            Extra bad pixels (True = bad), OR-ed with the image mask.

        Returns
        -------
        bkg_map, rms_map : float64 arrays of the image shape (image units per pixel)

        Raises
        ------
        InputError
            If no mesh box has at least half of its pixels valid.
        """
        img = as_image(image, mask)
        n_valid, n_area = self._box_counts(img)
        if not (n_valid >= MIN_GOOD_FRACTION * n_area).any():
            raise InputError(f"mesh background of {img.name}: no {self.box_size[0]}x"
                             f"{self.box_size[1]} box has at least half of its pixels valid")
        return self._maps(img)

    # -- per-source estimates -----------------------------------------------------------------
    @image_method
    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        """Background under each source: the mesh map at the (sub-pixel) positions.

        ``bkg`` and ``pixel_std`` are the background and rms maps bilinearly interpolated at
        ``(x, y)`` (0-based, pixel centres at integers); ``bkg_err`` follows the error model in the
        class notes; ``n_pix`` is the number of valid pixels in the source's mesh box.  ``mag``
        and ``neighbours`` are accepted for the protocol and ignored.
        """
        from scipy.ndimage import map_coordinates

        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        flags = F.zeros(n)
        nan = np.full(n, np.nan)
        if n == 0:
            return BackgroundResult(nan, nan.copy(), nan.copy(), np.zeros(0, np.int64), flags)
        ny, nx = img.shape
        bw, bh = self.box_size
        off = _off_image(img.shape, x, y)
        flags |= np.where(off, F.OFF_IMAGE, 0).astype(np.int32)
        with np.errstate(invalid="ignore"):
            edge = (x < bw / 2) | (x > nx - 1 - bw / 2) | (y < bh / 2) | (y > ny - 1 - bh / 2)
        flags |= np.where(edge & ~off, F.EDGE, 0).astype(np.int32)
        xi = np.clip(_round_half_up(x), 0, nx - 1)
        yi = np.clip(_round_half_up(y), 0, ny - 1)
        flags |= np.where(~off & img.mask[yi, xi], F.MASKED, 0).astype(np.int32)

        mesh = self._run(img)
        if not mesh.ok:
            flags |= F.NO_DATA
            return BackgroundResult(nan, nan.copy(), nan.copy(), np.zeros(n, np.int64), flags)
        xs, ys = np.where(off, 0.0, x), np.where(off, 0.0, y)
        coords = np.vstack([ys, xs])
        bkg = map_coordinates(mesh.back, coords, order=1, mode="nearest")
        rms = map_coordinates(mesh.rms, coords, order=1, mode="nearest")
        # node (i, j) of sep's spline sits at pixel ((i + 0.5) bw, (j + 0.5) bh)
        nodes = np.vstack([ys / bh - 0.5, xs / bw - 0.5])
        gain = map_coordinates(mesh.gain, nodes, order=1, mode="nearest")
        err = K_MODE * rms / CLIP3_STD * gain
        n_pix = mesh.n_valid[np.clip(yi // bh, 0, mesh.n_valid.shape[0] - 1),
                             np.clip(xi // bw, 0, mesh.n_valid.shape[1] - 1)].astype(np.int64)
        bkg[off], rms[off], err[off] = np.nan, np.nan, np.nan
        n_pix[off] = 0
        return BackgroundResult(bkg, err, rms, n_pix, flags)
