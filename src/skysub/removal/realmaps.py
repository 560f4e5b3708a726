"""Injection–recovery of compact-source removal on real maps (``skysub evaluate removal --maps``).

A simulation can only say how the removal does on the simulator.  On a user's own map the test
is the astronomers' artificial-source test, through the machinery of ``skysub inject``
(:mod:`skysub.inject.core`: empty positions away from the map's own catalogued sources, its
NaN coverage and the edges; beams rendered at sub-pixel positions; the truths recorded): beams
of known flux are added to a copy of the map, every source -- the map's own and the injected
ones -- is removed, and

* the removed flux of each injected source is compared with its injected flux, per peak-SNR
  bin, beside the classical annulus method's;
* the filled holes of the injected sources are compared, pixel by pixel, with the map *before*
  the injection -- the real map's own pixels are the truth -- through the pixel statistics
  (mean, median, std, skewness, IQR) and the power spectrum of the map with those holes
  filled, each beside its **sampling floor**: the same comparison for the map's own pixels
  moved in from random other places (:func:`skysub.removal.evaluation.sampling_floor`, and
  :func:`spectrum_floor` for the spectrum), which is what a method would get that knew the
  map's statistics but nothing of what lies under each hole.

:func:`map_injections` makes the injected copies (the calibration, ``skysub train inpaint
--calibrate-only --maps``, measures the card's level and flux calibration on them);
:func:`evaluate_maps` scores a model; :func:`find_compact_sources` finds a map's own compact
sources when no catalogue is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from ..errors import InputError
from ..image import Image, as_image

#: peak-SNR bins of the real-map summary (eq. 1 SNR of the removal)
SNR_BINS = (5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, np.inf)
#: peak SNR range of the injected beams (drawn log-uniformly)
PEAK_SNR = (5.0, 500.0)
#: statistics of the holes compared with the map before injection
HOLE_STATS = ("mean", "median", "std", "skewness", "iqr")
#: spectrum bins with fewer Fourier modes are left out of the power-spectrum goal
MIN_MODES = 10


@dataclass
class MapInjection:
    """One injected copy of a real map, shaped like
    :class:`skysub.simulate.extended.ExtendedSim` so that the calibration can use it.

    Attributes
    ----------
    image : ndarray -- the map with the beams added (NaN coverage kept)
    truth : ndarray -- the map before the injection
    catalog : Table -- ``id, x, y, flux, injected``: the map's own sources (flux NaN) then the
        injected ones
    psf : ndarray -- the unit-sum beam the sources were rendered with
    extra : dict -- ``map`` (name), ``realisation``, ``truth_table`` (inject's truths)
    """

    image: np.ndarray
    truth: np.ndarray
    catalog: Table
    psf: np.ndarray
    extra: dict = field(default_factory=dict)


def find_compact_sources(data: np.ndarray, fwhm: float, *, threshold: float = 5.0,
                         mask: np.ndarray | None = None) -> Table:
    """The compact sources of a map when it comes without a catalogue: local maxima of the map
    minus its median-filtered background (box of 4 FWHM) above ``threshold`` times the pixel
    noise, at least a FWHM apart; ``id, x, y, peak``.  Only used to keep injected beams away
    from them and to mask them as at inference: give a real catalogue when there is one."""
    from scipy.ndimage import gaussian_filter, maximum_filter, median_filter

    d = np.asarray(data, float)
    bad = ~np.isfinite(d) if mask is None else (np.asarray(mask, bool) | ~np.isfinite(d))
    fill = np.where(bad, np.nanmedian(np.where(bad, np.nan, d)), d)
    box = max(5, int(round(4 * fwhm)) | 1)
    hp = gaussian_filter(fill - median_filter(fill, size=box), fwhm / 2.3548 / 2)
    # the smoothed high-pass map's noise, measured on itself (the kernel correlates pixels)
    v = hp[~bad]
    sig = 1.4826 * float(np.median(np.abs(v - np.median(v)))) if v.size else float("nan")
    peak = (hp == maximum_filter(hp, size=max(3, int(round(fwhm)) | 1))) & (hp > threshold * sig)
    peak &= ~bad
    y, x = np.nonzero(peak)
    order = np.argsort(-hp[y, x])
    return Table({"id": np.arange(1, len(x) + 1), "x": x[order].astype(float),
                  "y": y[order].astype(float), "peak": hp[y[order], x[order]]})


def _settings(psf: np.ndarray, n: int, radius: float, separation: float, edge: float,
              peak_snr: tuple[float, float]):
    from ..inject.core import InjectionSettings

    # inject draws the aperture SNR flux / (sigma sqrt(pi r^2)); the removal's is the peak
    # SNR (eq. 1), flux x max(psf) / sigma: convert the range
    factor = float(np.max(psf)) * np.sqrt(np.pi * radius ** 2)
    lo, hi = peak_snr
    return InjectionSettings(kind="star", n_per_image=int(n), snr=(lo / factor, hi / factor),
                             radius=float(radius), min_separation=float(separation),
                             edge_margin=float(edge), poisson=False, zeropoint=25.0)


def map_injections(image: Image | np.ndarray, catalog: Table | None, psf: np.ndarray, *,
                   n: int = 40, realisations: int = 3, seed: int = 0, radius: float = 6.0,
                   separation: float | None = None, edge: float = 12.0,
                   peak_snr: tuple[float, float] = PEAK_SNR) -> list[MapInjection]:
    """``realisations`` injected copies of ``image`` with up to ``n`` beams each (``psf``, unit
    sum), at empty positions: ``separation`` px (default: 4 FWHM of the beam, at least 12)
    from the map's own ``catalog`` sources and from each other, ``edge`` px from the border,
    no NaN / masked pixel within ``radius`` + 2 px; peak SNRs log-uniform in ``peak_snr``
    (against the map's mesh RMS, :func:`skysub.inject.core.sky_sigma`).  Reproducible from
    ``(seed, realisation)``."""
    from ..inject.core import inject_sources

    img = as_image(image)
    p = np.asarray(psf, float)
    p = p / p.sum()
    own = catalog if catalog is not None else Table({"id": np.zeros(0, int), "x": np.zeros(0),
                                                     "y": np.zeros(0)})
    if separation is None:
        from .domain import psf_fwhm_of

        separation = max(12.0, 4.0 * psf_fwhm_of(p))
    settings = _settings(p, n, radius, separation, edge, peak_snr)
    out = []
    for r in range(int(realisations)):
        inj = inject_sources(img, own, settings, psf=p, seed=seed, realisation=r)
        t = inj.truth
        cat = Table({"id": np.concatenate([np.asarray(own["id"]).astype(np.int64),
                                           np.asarray(t["id"], np.int64)]),
                     "x": np.concatenate([np.asarray(own["x"], float), np.asarray(t["x"])]),
                     "y": np.concatenate([np.asarray(own["y"], float), np.asarray(t["y"])]),
                     "flux": np.concatenate([np.full(len(own), np.nan),
                                             np.asarray(t["flux_true"], float)]),
                     "injected": np.concatenate([np.zeros(len(own), bool),
                                                 np.ones(len(t), bool)])})
        data = np.where(img.mask, np.nan, inj.image.data)
        truth = np.where(img.mask, np.nan, img.data)
        out.append(MapInjection(image=data, truth=truth, catalog=cat, psf=p,
                                extra={"map": img.name, "realisation": r, "truth_table": t}))
    return out


def spectrum_floor(truth: np.ndarray, region: np.ndarray, rng: np.random.Generator, *,
                   n_moves: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The power spectrum's sampling floor: ``|P(truth) - P(truth with region filled by its
    own pixels from a random cyclic shift)| / sum P(truth)`` per k bin, median over
    ``n_moves`` shifts -- the difference a method would make that knew the map's statistics
    but nothing of what lies under the holes.  Returns ``k, floor, n_modes``."""
    from ..metrics import power_spectrum

    k, p0, det = power_spectrum(truth, return_details=True)
    norm = float(np.sum(p0))
    diffs = []
    for _ in range(int(n_moves)):
        shift = tuple(int(v) for v in rng.integers(0, region.shape))
        moved = np.roll(truth, shift, axis=(0, 1))
        fill = np.where(region & np.isfinite(moved), moved, truth)
        _, p1 = power_spectrum(fill)
        diffs.append(np.abs(p0 - p1) / norm)
    return k, np.median(diffs, axis=0), np.asarray(det["n_modes"])


def _discs(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    from .core import paint_holes

    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(r)
    return paint_holes(shape, x[ok], y[ok], r[ok])


def evaluate_injection(inj: MapInjection, *, model: Any = "inpaint-default",
                       radii: tuple[float, ...] = (4.0, 6.0, 8.0, 10.0), masks: Any = None,
                       options: dict[str, Any] | None = None, device: str = "cpu",
                       seed: int = 0) -> dict[str, Table]:
    """Remove every source of one injected map and score the injected ones (module doc):
    ``rows`` (per injected source and radius), ``stats`` (one row: the holes' statistics,
    map before injection vs filled, and their floors) and ``spectra`` (per k bin)."""
    from ..metrics import pixel_stats, power_spectrum
    from .core import remove_sources
    from .evaluation import sampling_floor

    opts = {k: v for k, v in (options or {}).items() if k != "batch_size"}
    res = remove_sources(inj.image, catalog=inj.catalog, model=model, masks=masks,
                         radii=radii, psf=inj.psf, device=device, seed=seed, **opts)
    cat = inj.catalog
    injected = np.asarray(cat["injected"], bool)
    t = res.table
    where = {v: i for i, v in enumerate(np.asarray(cat["id"]).tolist())}
    idx = np.array([where[v] for v in np.asarray(t["id"]).tolist()], int)
    rows = t[injected[idx]]
    ft = np.asarray(cat["flux"], float)[idx][injected[idx]]
    rows["flux_true"] = ft
    rows["ratio"] = np.asarray(rows["flux"], float) / ft
    rows["ratio_annulus"] = np.asarray(rows["flux_annulus"], float) / ft
    rows["map"] = np.full(len(rows), str(inj.extra.get("map", "<array>")))
    rows["realisation"] = np.full(len(rows), int(inj.extra.get("realisation", 0)))
    # the injected sources' holes, and the region the removal changed around them (holes,
    # feather, the wing model of their light): the truth there is the map before injection
    src = res.sources
    sinj = injected[np.array([where[v] for v in np.asarray(src["id"]).tolist()], int)]
    xs, ys = np.asarray(src["x"], float)[sinj], np.asarray(src["y"], float)[sinj]
    hr = np.asarray(src["mask_radius"], float)[sinj]
    shape = inj.truth.shape
    holes = _discs(shape, xs, ys, hr) & res.holes
    region = _discs(shape, xs, ys, hr + 3.0 + 2.0 * np.max(inj.psf.shape) / 4)
    truth = inj.truth
    own = ~np.asarray(cat["injected"], bool)
    own_discs = _discs(shape, np.asarray(cat["x"], float)[own], np.asarray(cat["y"], float)[own],
                       np.full(int(own.sum()), 2.0 * float(np.nanmax(hr)) if hr.size else 8.0))
    filled = np.where(region, res.image, truth)
    so = pixel_stats(truth, ~holes)
    sp = pixel_stats(filled, ~holes)
    rng = np.random.default_rng(1000 + int(inj.extra.get("realisation", 0)))
    # the floor's holes move over the map with its own sources blanked (they are no truth for
    # a background statistic)
    floor = sampling_floor(np.where(own_discs, np.nan, truth), holes, rng, original=so)
    st = {"map": str(inj.extra.get("map", "<array>")),
          "realisation": int(inj.extra.get("realisation", 0)), "n_pixels": so["n"]}
    for key in HOLE_STATS:
        st[f"original_{key}"] = so[key]
        st[f"filled_{key}"] = sp[key]
        with np.errstate(invalid="ignore", divide="ignore"):
            st[f"reldiff_{key}"] = abs(sp[key] - so[key]) / abs(so[key])
        st[f"floor_{key}"] = floor[key]
    k, p0, det = power_spectrum(truth, return_details=True)
    _, p1 = power_spectrum(np.where(np.isfinite(truth), filled, np.nan))
    norm = float(np.sum(p0))
    _, pfloor, _ = spectrum_floor(truth, region, np.random.default_rng(
        2000 + int(inj.extra.get("realisation", 0))))
    spectra = Table({"map": np.full(len(k), st["map"]), "realisation": np.full(
        len(k), st["realisation"]), "k": k, "n_modes": np.asarray(det["n_modes"]),
        "difference": (p0 - p1) / norm, "floor": pfloor})
    return {"rows": rows, "stats": Table(rows=[st]), "spectra": spectra}


def evaluate_maps(injections: list[MapInjection], **kwargs: Any) -> dict[str, Table]:
    """:func:`evaluate_injection` of each injected map, stacked (``rows``, ``stats``,
    ``spectra``)."""
    if not injections:
        raise InputError("no injected maps to evaluate")
    parts = [evaluate_injection(inj, **kwargs) for inj in injections]
    return {key: vstack([p[key] for p in parts]) for key in ("rows", "stats", "spectra")}


def _iqr(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.subtract(*np.percentile(v, [75, 25]))) if v.size else float("nan")


def flux_summary(rows: Table, radius: float = 6.0,
                 bins: tuple[float, ...] = SNR_BINS) -> Table:
    """Per peak-SNR bin (eq. 1 SNR of the removal) at one aperture radius: n, median and IQR of
    removed / injected flux for the model and the annulus method, and the IQR ratio.  Sources
    with masked aperture pixels, no data or off the image are left out."""
    r = rows[np.isclose(np.asarray(rows["radius"], float), radius)]
    r = r[(np.asarray(r["flags"]) & (2 | 8 | 16)) == 0]
    snr = np.asarray(r["snr"], float)
    out = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        s = (snr >= lo) & (snr < hi)
        m = np.asarray(r["ratio"], float)[s]
        a = np.asarray(r["ratio_annulus"], float)[s]
        if not s.any():
            continue
        out.append({"snr_lo": lo, "snr_hi": hi, "n": int(s.sum()),
                    "model_median": float(np.nanmedian(m)), "model_iqr": _iqr(m),
                    "annulus_median": float(np.nanmedian(a)), "annulus_iqr": _iqr(a),
                    "iqr_ratio": _iqr(m) / _iqr(a) if _iqr(a) > 0 else float("nan")})
    return Table(rows=out) if out else Table()


def hole_summary(stats: Table, spectra: Table) -> dict[str, Any]:
    """The restated goals on the holes: per statistic the fraction of injected maps below its
    floor and the median |relative difference| over the floor's median; for the spectrum, the
    fraction of k bins with >= :data:`MIN_MODES` modes below their floor, and the largest
    difference where the floor is below 1e-3."""
    out: dict[str, Any] = {}
    for key in HOLE_STATS:
        d = np.asarray(stats[f"reldiff_{key}"], float)
        f = np.asarray(stats[f"floor_{key}"], float)
        ok = np.isfinite(d) & np.isfinite(f)
        out[key] = {"below_floor": float(np.mean(d[ok] <= f[ok])) if ok.any() else float("nan"),
                    "median": float(np.median(d[ok])) if ok.any() else float("nan"),
                    "floor_median": float(np.median(f[ok])) if ok.any() else float("nan")}
    sel = np.asarray(spectra["n_modes"]) >= MIN_MODES
    diff = np.abs(np.asarray(spectra["difference"], float))[sel]
    fl = np.asarray(spectra["floor"], float)[sel]
    low = fl < 1e-3
    out["spectrum"] = {"bins": int(sel.sum()), "below_floor": float(np.mean(diff <= fl))
                       if sel.any() else float("nan"),
                       "max_where_floor_below_1e-3": float(np.max(diff[low])) if low.any()
                       else float("nan"), "max": float(np.max(diff)) if sel.any()
                       else float("nan")}
    return out


def summary_text(flux: Table, holes: dict[str, Any], title: str) -> str:
    """The printed summary of a real-map evaluation: the flux table and the hole goals."""
    lines = [title, "", "removed / injected flux per peak-SNR bin (aperture r = 6 px; "
             "model = image - prediction, annulus = classical):"]
    f = flux.copy()
    for c in f.colnames:
        if f[c].dtype.kind == "f":
            f[c].info.format = ".3f"
    lines += f.pformat(max_lines=-1, max_width=-1) if len(f) else ["  (no injected source)"]
    lines += ["", "filled holes of the injected sources vs the map before injection "
              "(|relative difference|, median over injections; floor: the map's own pixels "
              "moved in from random places):"]
    for key in HOLE_STATS:
        h = holes[key]
        lines.append(f"  {key:<9s} {h['median']:.3f}  floor {h['floor_median']:.3f}  below "
                     f"floor in {100 * h['below_floor']:.0f} % of injections")
    sp = holes["spectrum"]
    lines.append(f"  power spectrum: {100 * sp['below_floor']:.0f} % of {sp['bins']} k bins "
                 f"(>= {MIN_MODES} modes) below their floor; largest |difference| "
                 f"{sp['max']:.2e}, {sp['max_where_floor_below_1e-3']:.2e} where the floor "
                 "is < 1e-3")
    return "\n".join(lines)


def map_catalog_and_beam(image: Image, catalog: str | Table | None = None, *,
                         psf: np.ndarray | None = None, psf_fwhm: float | None = None,
                         default: float = 3.5) -> tuple[Table, float]:
    """A map's own sources and its beam FWHM [px]: the catalogue (a file or table; else
    :func:`find_compact_sources`) and the beam of ``psf``, ``psf_fwhm`` or the header's
    BMAJ/BMIN, else measured on the map's isolated sources (:func:`estimate_beam_fwhm`), else
    ``default``."""
    from ..io import catalog_for_image, read_catalog
    from .domain import map_beam

    fw = map_beam(image, psf=psf, psf_fwhm=psf_fwhm)
    data = np.where(image.mask, np.nan, image.data)
    if catalog is not None:
        cat = catalog_for_image(catalog if isinstance(catalog, Table) else read_catalog(catalog),
                                image)
    else:
        cat = find_compact_sources(data, fw or default, mask=image.mask)
    if fw is None:
        est = estimate_beam_fwhm(data, cat)
        fw = est if np.isfinite(est) else default
        if catalog is None:  # found again with the measured beam
            cat = find_compact_sources(data, fw, mask=image.mask)
    return cat, float(fw)


def evaluate_map_files(output: Any, maps: list[str], *, catalogs: list[str] | None = None,
                       model: Any = "inpaint-default", config: Any = None, n: int = 40,
                       realisations: int = 3, psf: str | None = None,
                       psf_fwhm: float | None = None, seed: int = 0,
                       separation: float | None = None, overwrite: bool = False,
                       quiet: bool = True, device: str = "cpu") -> dict[str, Any]:
    """``skysub evaluate removal --maps``: injection–recovery on FITS maps; writes
    ``flux_ratio.csv`` (one row per injected source and radius), ``flux_summary.csv``,
    ``pixel_stats.csv``, ``power_spectra.csv`` and ``summary.txt`` into ``output``."""
    from pathlib import Path

    from ..io import check_output, expand_paths, read_image, write_table
    from ..simulate.psf import gaussian_psf, load_psf
    from .core import removal_options
    from .masks import MaskTable

    if n < 1 or realisations < 1:
        raise InputError(f"--n and --realisations must be >= 1, got {n} and {realisations}")
    paths = [str(p) for p in expand_paths(maps)]
    catalogs = list(catalogs or [])
    if len(catalogs) not in (0, 1, len(paths)):
        raise InputError(f"--catalog: give one catalogue per map or one for all; got "
                         f"{len(catalogs)} for {len(paths)} maps")
    out = Path(output)
    names = ("flux_ratio.csv", "flux_summary.csv", "pixel_stats.csv", "power_spectra.csv",
             "summary.txt")
    for nm in names:
        check_output(out / nm, overwrite=overwrite, inputs=[*paths, *catalogs])
    section = dict(config.removal) if config is not None else {}
    fwhm_default = float(section.get("psf_fwhm", 3.5) or 3.5)
    masks = None
    if section.get("masks"):
        masks = MaskTable.from_config(section["masks"], psf_fwhm=psf_fwhm or fwhm_default)
    options = removal_options(section or None)
    psf_img = load_psf(psf) if psf else None
    injections = []
    for i, p in enumerate(paths):
        im = read_image(p)
        cat, fw = map_catalog_and_beam(im, catalogs[i if len(catalogs) > 1 else 0]
                                       if catalogs else None, psf=psf_img, psf_fwhm=psf_fwhm,
                                       default=fwhm_default)
        beam = psf_img if psf_img is not None else gaussian_psf(int(2 * np.ceil(4 * fw) + 1),
                                                                 fw)
        injections += map_injections(im, cat, beam, n=n, realisations=realisations,
                                     seed=seed + i, separation=separation)
    res = evaluate_maps(injections, model=model, masks=masks, options=options, device=device,
                        seed=seed)
    flux = flux_summary(res["rows"])
    holes = hole_summary(res["stats"], res["spectra"])
    text = summary_text(flux, holes, f"injection-recovery of compact-source removal on "
                        f"{len(paths)} map(s), {realisations} x up to {n} beams, model {model}")
    out.mkdir(parents=True, exist_ok=True)
    write_table(res["rows"], out / "flux_ratio.csv", overwrite=overwrite)
    write_table(flux, out / "flux_summary.csv", overwrite=overwrite)
    write_table(res["stats"], out / "pixel_stats.csv", overwrite=overwrite)
    write_table(res["spectra"], out / "power_spectra.csv", overwrite=overwrite)
    tmp = out / "summary.txt.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out / "summary.txt")
    return {"text": text, "flux": flux, "holes": holes, **res}


def estimate_beam_fwhm(data: np.ndarray, catalog: Table, *, n: int = 25, box: int = 15
                       ) -> float:
    """The beam FWHM [px] of a map without a beam in its header, from its own compact sources:
    the median over up to ``n`` of the brightest isolated catalogued sources (none within
    ``box`` px, not flat-topped: saturated) of the FWHM of their
    background-subtracted stamp (:func:`skysub.removal.domain.psf_fwhm_of`); NaN without any."""
    from .domain import psf_fwhm_of

    d = np.asarray(data, float)
    x, y = np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    h = box // 2
    out = []
    for i in range(len(x)):
        xi, yi = int(round(x[i])), int(round(y[i]))
        if not (h <= xi < d.shape[1] - h and h <= yi < d.shape[0] - h):
            continue
        others = np.hypot(x - x[i], y - y[i])
        if np.sum(others < box) > 1:
            continue
        st = d[yi - h:yi + h + 1, xi - h:xi + h + 1]
        if not np.isfinite(st).all():
            continue
        edge = np.concatenate([st[0], st[-1], st[:, 0], st[:, -1]])
        st = st - np.median(edge)
        if np.count_nonzero(st >= 0.98 * st.max()) >= 3:  # a flat (saturated) top
            continue
        if st[h, h] <= 0 or st.max() != st[h - 1:h + 2, h - 1:h + 2].max():
            continue
        out.append(psf_fwhm_of(np.clip(st, 0, None)))
        if len(out) >= n:
            break
    return float(np.median(out)) if out else float("nan")
