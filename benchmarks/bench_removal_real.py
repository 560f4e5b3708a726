"""Compact-source removal on real maps that installed packages ship: injection-recovery.

The maps are real images from astropy's test data, read where the installed astropy keeps them
(nothing is copied into skysub):

* development: ``parkes-1904-66`` (a 192 x 192 Parkes multibeam radio continuum map, Jy/beam,
  NaN outside the coverage, beam 0.24 deg = 3.6 px from its header) and ``m13`` (a 300 x 300
  photographic plate of the globular cluster M13);
* held out from every choice: ``ngc1316`` (the 300 x 440 optical frame of NGC 1316, HDU 1 of
  ``comp.fits``), and the real maps of :data:`benchmarks.heldout.HELD_OUT_MAPS` (a JCMT SCUBA
  850 um map and a 2MASS extinction map, from the ``astrodendro`` source distribution, fetched
  from PyPI the first time), run only with ``--maps all`` or ``--maps held-out``.

Each map's own compact sources are found (5 sigma peaks of the map minus its median-filtered
background) and its beam is the header's, else measured on its isolated sources.  Gaussian
beams of known flux (peak SNR 5-500) are injected at empty positions (``skysub inject``'s
machinery), every source is removed, and the injected ones are scored: removed / injected flux
per peak-SNR bin for the model and the classical annulus method; the filled holes against the
map before injection (pixel statistics and the power spectrum, each against its sampling
floor: the map's own pixels moved in from random places).  Two cards: the model as shipped
(calibrated on simulated fields), and the same weights calibrated on beams injected into the
map itself (other seeds and positions than the evaluation's: ``skysub train inpaint
--calibrate-only --maps MAP --init inpaint-default``), the user's path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import BenchResult, Check, base_parser, run_and_print

DEV = ("parkes-1904-66", "m13")
HELD_OUT = ("ngc1316", "scuba-l1551", "pera-extinction")

COLUMNS = [("map", "map", ""), ("card", "card", ""), ("snr", "SNR", ""), ("n", "n", "d"),
           ("model_median", "model med", ".3f"), ("model_iqr", "model IQR", ".3f"),
           ("annulus_median", "annulus med", ".3f"), ("annulus_iqr", "annulus IQR", ".3f"),
           ("iqr_ratio", "IQR ratio", ".2f")]
HOLE_COLUMNS = [("map", "map", ""), ("card", "card", ""), ("stat", "statistic", ""),
                ("median", "|rel diff| med", ".3f"), ("floor_median", "floor med", ".3f"),
                ("below_floor", "below floor", ".2f")]


def real_maps() -> dict[str, tuple[Path, int]]:
    """Name -> (path, HDU) of the real maps available in this environment."""
    import astropy

    base = Path(astropy.__file__).parent
    cands = {"parkes-1904-66": (base / "modeling" / "tests" / "data" / "1904-66_AZP.fits", 0),
             "m13": (base / "io" / "fits" / "hdu" / "compressed" / "tests" / "data" / "m13.fits",
                     0),
             "ngc1316": (base / "io" / "fits" / "tests" / "data" / "comp.fits", 1)}
    return {k: v for k, v in cands.items() if v[0].exists()}


def calibrated_on_map(model: str, injections: list, out: Path) -> Path:
    """The weights of ``model`` with their card's calibration measured on ``injections``
    (beams injected into the map; :func:`skysub.removal.calibration.calibrate`), saved to
    ``out``."""
    from skysub.config import load_config
    from skysub.nn.modelfile import load_model, save_model
    from skysub.removal.calibration import MAP_MIN_PER_BIN, MAP_SNR_EDGES, calibrate
    from skysub.removal.core import removal_options
    from skysub.removal.masks import MaskTable

    net, card = load_model(model, kind="inpaint")
    section = load_config("inpaint-generic").removal
    masks = MaskTable.from_config(card["inputs"].get("inference_masks", card["inputs"]["masks"]))
    cal = calibrate(net, injections, masks, options=removal_options(section),
                    snr_edges=MAP_SNR_EDGES, min_per_flux_bin=MAP_MIN_PER_BIN,
                    min_per_level_bin=MAP_MIN_PER_BIN)
    card = {k: v for k, v in card.items() if k not in ("path", "file_size_bytes")}
    card["error_calibration"] = cal
    save_model(out, net, card, overwrite=True)
    return out


def run(which: str = "dev", *, n: int = 40, realisations: int = 3, cal_realisations: int = 3,
        seed: int = 0, model: str = "inpaint-default", map_calibration: bool = True
        ) -> BenchResult:
    from skysub.config import load_config
    from skysub.io import read_image
    from skysub.nn.modelfile import read_card
    from skysub.removal.core import removal_options, remove_sources
    from skysub.removal.domain import check_domain, map_statistics
    from skysub.removal.realmaps import (
        evaluate_maps,
        flux_summary,
        hole_summary,
        map_catalog_and_beam,
        map_injections,
    )
    from skysub.simulate.psf import gaussian_psf

    names = {"dev": DEV, "held-out": HELD_OUT, "all": DEV + HELD_OUT}[which]
    maps = {k: v for k, v in real_maps().items() if k in names}
    if which != "dev":
        from .heldout import held_out_maps

        maps.update(held_out_maps())
    options = removal_options(load_config("inpaint-generic").removal)
    res = BenchResult(
        title=(f"Compact-source removal on {len(maps)} real maps ({which}): Gaussian beams, "
               f"peak SNR 5-500, {realisations} x up to {n} per map, aperture r = 6 px"),
        columns=COLUMNS)
    hole_rows: list[dict] = []
    domain = read_card(model).get("domain")
    goal_flux, goal_iqr = [], []
    tmp = Path(tempfile.mkdtemp(prefix="skysub-bench-removal-real-"))
    for name, (path, hdu) in maps.items():
        t0 = time.perf_counter()
        img = read_image(path, hdu=hdu)
        cat, fwhm = map_catalog_and_beam(img)
        beam = gaussian_psf(int(2 * np.ceil(4 * fwhm) + 1), fwhm)
        # the domain check of skysub remove: the map with its own sources removed
        clean = remove_sources(img, catalog=cat, model=model, psf=beam, radii=(6.0,))
        stats = map_statistics(np.where(img.mask, np.nan, clean.image), beam_fwhm_px=fwhm)
        problems = check_domain(stats, domain)
        res.notes.append(f"{name}: {img.shape[0]} x {img.shape[1]} px, {len(cat)} own sources, "
                         f"beam {fwhm:.2f} px, noise/scatter {stats['noise_fraction']:.3f}, "
                         f"P(k) slope {stats['ps_slope']:.2f}; domain check: "
                         + ("; ".join(problems) if problems else "inside"))
        evals = map_injections(img, cat, beam, n=n, realisations=realisations, seed=seed)
        cards = [("shipped", model)]
        if map_calibration:
            cal_inj = map_injections(img, cat, beam, n=n, realisations=cal_realisations,
                                     seed=seed + 1000)
            try:
                cards.append(("on-map", str(calibrated_on_map(model, cal_inj,
                                                              tmp / f"{name}.pt"))))
            except ValueError as exc:  # too few injected beams found room on the map
                res.notes.append(f"{name}: no calibration on the map ({exc})")
        for label, m in cards:
            out = evaluate_maps(evals, model=m, options=options, seed=seed)
            flux = flux_summary(out["rows"])
            for r in flux:
                row = {"map": name, "card": label, "snr": f"{r['snr_lo']:.0f}-{r['snr_hi']:.0f}",
                       **{k: float(r[k]) for k in ("model_median", "model_iqr",
                                                   "annulus_median", "annulus_iqr",
                                                   "iqr_ratio")}, "n": int(r["n"])}
                res.rows.append(row)
                if r["snr_lo"] >= 10 and r["n"] >= 5:
                    goal_flux.append((name, label, abs(r["model_median"] - 1)))
                    goal_iqr.append((name, label, r["iqr_ratio"]))
            holes = hole_summary(out["stats"], out["spectra"])
            for key in ("mean", "median", "std", "skewness", "iqr"):
                hole_rows.append({"map": name, "card": label, "stat": key, **holes[key]})
            sp = holes["spectrum"]
            hole_rows.append({"map": name, "card": label, "stat": "P(k) bins",
                              "median": sp["max"], "floor_median": sp[
                                  "max_where_floor_below_1e-3"],
                              "below_floor": sp["below_floor"]})
        res.notes.append(f"{name}: {len(evals)} injections, {time.perf_counter() - t0:.0f} s")
    res.extra_tables.append(("filled holes of the injected sources vs the map before injection "
                             "(median over injections; P(k) row: max |difference| over bins "
                             ">= 10 modes, max where the floor < 1e-3, fraction of bins below "
                             "their floor)", HOLE_COLUMNS, hole_rows))
    for label in ("shipped", "on-map"):
        f = [(m, d) for m, c, d in goal_flux if c == label]
        q = [(m, d) for m, c, d in goal_iqr if c == label]
        if not f:
            continue
        res.goals.append(Check(f"{label}: median removed/injected within 2 % of 1 in every "
                               "SNR > 10 bin (>= 5 sources) on every map",
                               all(d <= 0.02 for _, d in f),
                               f"worst {max(d for _, d in f):.3f}"))
        res.goals.append(Check(f"{label}: IQR <= 0.5 x annulus IQR in those bins",
                               all(d <= 0.5 for _, d in q if np.isfinite(d)),
                               f"worst {np.nanmax([d for _, d in q]):.2f}, median "
                               f"{np.nanmedian([d for _, d in q]):.2f}"))
    for label in ("shipped", "on-map"):
        rows = [r for r in hole_rows if r["card"] == label and r["stat"] != "P(k) bins"]
        if rows:
            res.goals.append(Check(
                f"{label}: hole statistics below their floor in >= 90 % of injections and "
                "median |rel diff| <= 0.5 x the floor's, every statistic and map",
                all(r["below_floor"] >= 0.9 and r["median"] <= 0.5 * r["floor_median"]
                    for r in rows),
                "worst below-floor fraction "
                f"{min(r['below_floor'] for r in rows):.2f}"))
    res.notes.append("IQR ratio = model IQR / annulus IQR.  Sources flagged masked / no data / "
                     "off image are left out.  Truth of the holes: the map's own pixels before "
                     "the injection.")
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--maps", choices=("dev", "held-out", "all"), default="dev",
                   help="development maps (default), the held-out map, or all")
    p.add_argument("--n", type=int, default=40, help="beams per map and realisation (40)")
    p.add_argument("--realisations", type=int, default=None, help="per map (3; 1 --quick)")
    p.add_argument("--model", default="inpaint-default", help="model (default inpaint-default)")
    p.add_argument("--no-map-calibration", action="store_true",
                   help="only the shipped card (no calibration on the maps)")
    args = p.parse_args(argv)
    args.realisations = args.realisations or (1 if args.quick else 3)
    if args.n < 1 or args.realisations < 1:
        p.error("--n and --realisations must be >= 1")
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    return run(args.maps, n=args.n, realisations=args.realisations,
               cal_realisations=max(3, args.realisations), seed=args.seed, model=args.model,
               map_calibration=not args.no_map_calibration)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
