"""Judging background estimates: tables and plots against truth, or the duplicates test.

``skysub evaluate background PRED.csv... --truth TRUTH.csv`` is a thin layer over
:func:`evaluate_background`.  Every prediction table is one method (``skysub background`` or
``skysub photometry`` output: ``image, id, bkg, bkg_err`` and, for photometry, ``flux,
flux_err``); the truth table is ``skysub simulate``'s ``truth.csv`` (``image, id, bkg_true`` and
optionally ``edge_distance``, ``band``, ``x``, ``y``, ``mag``).

With truth: per method, sigma68 of the relative error ``(b - b_true) / b_true`` for all / edge /
centre sources and per band, the bias (median relative error), the pull width
``sigma68[(b - b_true) / bkg_err]`` and the fraction of ``|pull| > 5``; plots of the relative
error against CCD position (BKGnet Fig. 8), the pull histograms against N(0, 1) (Fig. 10) and
sigma68 per band for every method (Fig. 9).

Without truth (real data with repeated exposures): the duplicates test (BKGnet eq. 11) on the
fluxes, ``sigma68[D]`` per band and against magnitude (Figs. 11-12); needs photometry tables
(``flux, flux_err``) and a ``band`` column (in the table or joined from ``--truth``-less
``--bands`` mapping: the image header's FILTER is written by ``skysub photometry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.table import Table, join, vstack

from .errors import CatalogError, InputError
from .io import write_table
from .metrics import background_summary, duplicates_from_table, sigma68

#: a source closer than this to a CCD edge is an "edge" source (BKGnet goals: 150 px)
EDGE_WIDTH = 150.0


def _need(t: Table, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in t.colnames]
    if missing:
        raise CatalogError(f"{what} lacks column(s) {', '.join(missing)}; has "
                           f"{', '.join(t.colnames)}")


def _read(path_or_table, what: str) -> Table:
    if isinstance(path_or_table, Table):
        return path_or_table
    from .io import read_catalog

    p = Path(path_or_table)
    if not p.is_file():
        from .errors import MissingFileError

        raise MissingFileError(f"{what} not found: {p}")
    if p.suffix.lower() == ".csv":
        return Table.read(p, format="ascii.csv")
    return read_catalog(p)


def method_label(path: str | Path) -> str:
    """``bkg_annulus.csv`` -> ``bkg_annulus`` (a method's label from its file name)."""
    return Path(str(path)).stem


def evaluate_background(predictions: Mapping[str, Table | str | Path],
                        truth: Table | str | Path | None = None, *,
                        output_dir: str | Path | None = None, edge_width: float = EDGE_WIDTH,
                        overwrite: bool = False) -> Table:
    """Summary table of every method (and plots in ``output_dir``).

    Parameters
    ----------
    predictions : {label: table or path}
    truth : truth table or path; None = the duplicates test on the fluxes
    output_dir : folder for ``evaluate_background.csv`` and the PNG plots (None = no files)
    edge_width : px from a CCD edge within which a source is an "edge" source

    Returns
    -------
    Table with one row per method x group (all, edge, centre, band:<name>, ...)
    """
    if not predictions:
        raise InputError("no prediction tables given")
    preds = {k: _read(v, f"prediction table {k}") for k, v in predictions.items()}
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if truth is None:
        summary = _duplicates(preds, out, overwrite=overwrite)
    else:
        tr = _read(truth, "truth table")
        _need(tr, ("image", "id", "bkg_true"), "truth table")
        summary, joined = _against_truth(preds, tr, edge_width)
        if out is not None:
            _plots(joined, out, edge_width)
    if out is not None:
        write_table(summary, out / "evaluate_background.csv", overwrite=True)
    return summary


def _against_truth(preds: dict[str, Table], tr: Table, edge_width: float
                   ) -> tuple[Table, dict[str, Table]]:
    keep = [c for c in ("image", "id", "bkg_true", "edge_distance", "band", "mag")
            if c in tr.colnames]
    rows, joined = [], {}
    for label, p in preds.items():
        _need(p, ("image", "id", "bkg", "bkg_err"), f"prediction table {label}")
        p = p.copy()
        for c in ("bkg_true", "edge_distance", "band", "mag"):
            if c in p.colnames and c in keep:
                p.remove_column(c)
        cols = keep + [c for c in ("x", "y") if c in tr.colnames and c not in p.colnames]
        j = join(p, tr[cols], keys=["image", "id"])
        if len(j) == 0:
            raise CatalogError(f"prediction table {label} shares no (image, id) with the truth "
                               "table")
        joined[label] = j
        groups = []
        if "edge_distance" in j.colnames:
            groups.append(np.where(np.asarray(j["edge_distance"], float) < edge_width, "edge",
                                   "centre"))
        if "band" in j.colnames:
            groups.append(np.array([f"band:{b}" for b in j["band"]]))
        s = background_summary(j["bkg"], j["bkg_true"], j["bkg_err"])
        for g in groups:
            sg = background_summary(j["bkg"], j["bkg_true"], j["bkg_err"], groups=g)
            s = vstack([s, sg[1:]])
        s.add_column([label] * len(s), name="method", index=0)
        rows.append(s)
    return vstack(rows, metadata_conflicts="silent"), joined


def _duplicates(preds: dict[str, Table], out: Path | None, *, overwrite: bool) -> Table:
    rows = []
    curves = {}
    for label, p in preds.items():
        _need(p, ("id", "flux", "flux_err"), f"table {label} (the duplicates test needs "
                                             "photometry: skysub photometry output)")
        groups = ("band",) if "band" in p.colnames else ()
        d, i, _ = duplicates_from_table(p, group_cols=groups, return_pairs=True)
        rows.append({"method": label, "group": "all", "n_pairs": len(d),
                     "sigma68_D": float(sigma68(d)) if len(d) else np.nan})
        if groups:
            bands = np.asarray(p["band"]).astype(str)[i]
            for b in np.unique(bands):
                db = d[bands == b]
                rows.append({"method": label, "group": f"band:{b}", "n_pairs": len(db),
                             "sigma68_D": float(sigma68(db)) if len(db) else np.nan})
        if "mag" in p.colnames and len(d):
            mag = np.asarray(p["mag"], float)[i]
            edges = np.arange(np.floor(np.nanmin(mag)), np.ceil(np.nanmax(mag)) + 0.5, 0.5)
            idx = np.digitize(mag, edges)
            xs, ys = [], []
            for k in range(1, len(edges)):
                sel = idx == k
                if sel.sum() >= 20:
                    xs.append(0.5 * (edges[k - 1] + edges[k]))
                    ys.append(float(sigma68(d[sel])))
                    rows.append({"method": label, "group": f"mag:{xs[-1]:.2f}",
                                 "n_pairs": int(sel.sum()), "sigma68_D": ys[-1]})
            curves[label] = (xs, ys)
    t = Table(rows=rows)
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for label in preds:
            sel = t[(t["method"] == label) & np.char.startswith(t["group"].astype(str),
                                                                "band:")]
            if len(sel):
                axes[0].plot([g[5:] for g in sel["group"]], sel["sigma68_D"], "o-", label=label)
            if label in curves:
                axes[1].plot(*curves[label], "o-", label=label)
        for ax, xl in zip(axes, ("band", "magnitude"), strict=True):
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xlabel(xl)
            ax.set_ylabel("sigma68[D]")
            ax.legend()
        axes[0].set_title("duplicates test per band (BKGnet Fig. 11)")
        axes[1].set_title("duplicates test vs magnitude (Fig. 12)")
        fig.savefig(out / "duplicates.png", dpi=90)
        plt.close(fig)
    return t


def _plots(joined: dict[str, Table], out: Path, edge_width: float) -> None:
    import matplotlib

    matplotlib.use("Agg")

    labels = list(joined)
    # relative error against CCD position (Fig. 8)
    labels_xy = [lab for lab in labels if {"x", "y"} <= set(joined[lab].colnames)]
    if labels_xy:
        _position_plot(joined, labels_xy, out)
    _pull_and_band_plots(joined, labels, out)


def _position_plot(joined: dict[str, Table], labels: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4.2), squeeze=False,
                             constrained_layout=True)
    for ax, label in zip(axes[0], labels, strict=True):
        j = joined[label]
        rel = (np.asarray(j["bkg"], float) - j["bkg_true"]) / j["bkg_true"]
        lim = max(float(np.nanpercentile(np.abs(rel), 95)), 1e-4)
        sc = ax.scatter(j["x"], j["y"], c=rel, s=5, cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_title(f"{label}: sigma68 = {sigma68(rel[np.isfinite(rel)]):.4f}")
        ax.set_aspect("equal")
        ax.set_xlabel("x [px]")
        ax.set_ylabel("y [px]")
        fig.colorbar(sc, ax=ax, label="(b - b_true) / b_true")
    fig.savefig(out / "relative_error_vs_position.png", dpi=90)
    plt.close(fig)


def _pull_and_band_plots(joined: dict[str, Table], labels: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    # pulls (Fig. 10)
    fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    grid = np.linspace(-6, 6, 241)
    for label in labels:
        j = joined[label]
        pull = (np.asarray(j["bkg"], float) - j["bkg_true"]) / j["bkg_err"]
        pull = pull[np.isfinite(pull)]
        ax.hist(np.clip(pull, -6, 6), bins=60, range=(-6, 6), density=True, histtype="step",
                lw=1.5, label=f"{label} (sigma68 {sigma68(pull):.2f})")
    ax.plot(grid, norm.pdf(grid), "k--", label="N(0, 1)")
    ax.set_xlabel("(b - b_true) / bkg_err")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("pulls (BKGnet Fig. 10)")
    fig.savefig(out / "pulls.png", dpi=90)
    plt.close(fig)
    # sigma68 per band (Fig. 9)
    if all("band" in joined[label].colnames for label in labels):
        fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
        for label in labels:
            j = joined[label]
            bands = np.asarray(j["band"]).astype(str)
            ub = sorted(np.unique(bands))
            rel = (np.asarray(j["bkg"], float) - j["bkg_true"]) / j["bkg_true"]
            ys = [sigma68(rel[(bands == b) & np.isfinite(rel)]) for b in ub]
            ax.plot(ub, ys, "o-", label=label)
        ax.set_xlabel("band")
        ax.set_ylabel("sigma68 of (b - b_true) / b_true")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("accuracy per band (BKGnet Fig. 9)")
        fig.savefig(out / "sigma68_per_band.png", dpi=90)
        plt.close(fig)


def print_summary(t: Table) -> None:
    """Print a summary table with aligned columns."""
    cols = [c for c in ("method", "group", "n", "n_pairs", "sigma68_rel", "bias_rel",
                        "pull_sigma68", "frac_pull_gt5", "sigma68_D") if c in t.colnames]
    cells = [cols]
    for r in t:
        row = []
        for c in cols:
            v = r[c]
            if isinstance(v, float | np.floating):
                row.append(f"{v:+.4f}" if c == "bias_rel" else f"{v:.4f}")
            else:
                row.append(str(v))
        cells.append(row)
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for k, r in enumerate(cells):
        print("  ".join(s.rjust(x) for s, x in zip(r, w, strict=True)))
        if k == 0:
            print("  ".join("-" * x for x in w))


__all__ = ["evaluate_background", "print_summary", "method_label", "EDGE_WIDTH"]


# ----------------------------------------------------------------------------------------------
# photometry benchmark (Lumos §5, Figs. 6-9) -- `skysub evaluate photometry`
# ----------------------------------------------------------------------------------------------

PHOT_METHODS = ("lumos", "lumos_nomag", "aperture", "optimal_oracle", "optimal", "profile_fit")
#: Lumos modes: the catalogue magnitude as a prior (default) and data-only PDFs
LUMOS_MODES = {"lumos": True, "lumos_nomag": False}


def _inject(image, bkg_map, x, y, g, settings, psf, rng, *, dmag=None):
    """Add galaxies ``g`` (dict: mag, r50, sersic_n, ba, theta) at (x, y) of ``image`` (with
    photon noise), in place; return their true fluxes and the noise-free model stamps (31 px,
    stamps layout) and the true background under each (mean of a 31 px box)."""
    from .simulate.ccd import _add_stamps
    from .simulate.galaxies import band_flux, render_galaxies
    from .stamps import _round_half_up, cutouts

    meta = image.meta
    m = len(x)
    dmag = rng.normal(0.0, settings.colour_scatter, m) if dmag is None else dmag
    flux = band_flux(g["mag"], dmag, meta.exptime or 1.0, meta.gain, settings)
    xi, yi = _round_half_up(x), _round_half_up(y)
    clean = render_galaxies(flux, g["r50"], g["sersic_n"], g["ba"], g["theta"], x - xi, y - yi,
                            psf, 59, settings.oversample)
    noisy = rng.poisson(np.clip(clean, 0, None) * meta.gain) / meta.gain
    _add_stamps(image.data, noisy, xi, yi)
    model31 = clean[:, 14:45, 14:45]
    bt = cutouts(bkg_map, x, y, 31).data
    return flux, model31, bt


def _test_fields(n_objects: int, config, settings, seed: int, *, spacing: float = 72.0):
    """Held-out exposures of the simulator (seed distinct from training) with galaxies injected
    on a jittered grid of empty positions; every object is observed twice (exposures k and
    k + n_keys share band and epoch) with the same flux, for the duplicates test."""
    from .simulate.galaxies import band_system_catalog, psf_for
    from .simulate.trainingdata import galaxy_pool, simulated_exposures

    rng = np.random.default_rng(seed)
    psf = psf_for(settings)
    bands = config.simulate.get("bands", ["NB455", "NB685", "NB845"])
    epochs = config.simulate.get("epochs", ["before", "after"])
    nk = len(bands) * len(epochs)
    shape = config.simulate.get("shape", [512, 1024])
    per = int((shape[0] // spacing - 1) * (shape[1] // spacing - 1) * 0.8)
    n_exp = int(np.ceil(n_objects / max(per, 1) / nk)) * 2 * nk
    exps, fieldcat = simulated_exposures(n_exp, config=config.simulate, seed=seed + 7)
    pool = galaxy_pool(fieldcat, rng)
    bandcat = band_system_catalog(fieldcat, config.simulate, settings)  # the neighbours' mags
    rows, images = [], []
    for blk in range(0, n_exp, 2 * nk):
        for k in range(nk):
            pair = [exps[blk + k], exps[blk + k + nk]]
            pos = []
            for image, cat_xy, _bg, _t in pair:
                ny, nx = image.shape
                gx, gy = np.meshgrid(np.arange(spacing, nx - spacing / 2, spacing),
                                     np.arange(spacing, ny - spacing / 2, spacing))
                px = gx.ravel() + rng.uniform(-8, 8, gx.size)
                py = gy.ravel() + rng.uniform(-8, 8, gy.size)
                from scipy.spatial import cKDTree

                d, _ = cKDTree(np.column_stack(cat_xy)).query(np.column_stack([px, py]))
                pos.append((px[d > settings.empty_radius], py[d > settings.empty_radius]))
            m = min(len(pos[0][0]), len(pos[1][0]))
            pick = rng.integers(0, len(pool["mag"]), m)
            g = {c: np.asarray(v, float)[pick] for c, v in pool.items()}
            g["sersic_n"] = np.clip(g["sersic_n"], 0.3, 8.0)
            dmag = rng.normal(0.0, settings.colour_scatter, m)
            oid = np.arange(m) + 100000 * (blk + k)
            for j, (image, xy, bg, _t) in enumerate(pair):
                x, y = pos[j][0][:m], pos[j][1][:m]
                flux, model, bt = _inject(image, bg, x, y, g, settings, psf, rng, dmag=dmag)
                rows.append(Table({"image": [image.name] * m, "id": oid, "x": x, "y": y,
                                   "flux_true": flux, "band": [image.meta.band] * m, **g}))
                images.append((image, rows[-1], model, bt, _context(xy, bandcat)))
    return images, psf


SHAPE_COLS = ("mag", "r50", "sersic_n", "ba", "theta")


def _context(cat_xy, fieldcat, extra: Table | None = None) -> Table:
    """The rest of a user's catalogue around the test targets: the exposure's catalogued field
    sources (``cat_xy`` positions of ``fieldcat`` rows) plus ``extra`` rows."""
    t = Table({"x": np.asarray(cat_xy[0], float), "y": np.asarray(cat_xy[1], float),
               **{c: np.asarray(fieldcat[c], float) for c in SHAPE_COLS}})
    if extra is not None and len(extra):
        t = vstack([t, extra[["x", "y", *SHAPE_COLS]]])
    return t


def _run_methods(image, cat, model, bt, psf, lumos, methods, context: Table | None = None):
    """Measure the targets ``cat`` with every method.  Lumos measures the targets together with
    ``context`` (the other catalogued sources: its neighbour channel), as a user's run does."""
    from .background.annulus import AnnulusBackground
    from .photometry.aperture import ModelAperturePhotometer
    from .photometry.optimal import OptimalPhotometer
    from .photometry.profile_fit import ProfileFitPhotometer

    ann = AnnulusBackground(30.0, 45.0)
    # white-noise simulations: the classical error model as the papers state it
    # (no empty-aperture calibration)
    nocal = {"error_calibration": "none"}
    x, y = np.asarray(cat["x"]), np.asarray(cat["y"])
    out = {}
    n = len(cat)
    full = cat[["x", "y", *SHAPE_COLS]]
    if context is not None and len(context):
        full = vstack([full, context[["x", "y", *SHAPE_COLS]]])
    for m in LUMOS_MODES:
        if m in methods:
            r = lumos[m].measure(image, np.asarray(full["x"]), np.asarray(full["y"]),
                                 catalog=full)
            out[m] = (r.flux[:n], r.flux_err[:n], {k: np.asarray(v)[:n]
                                                  for k, v in r.extra.items()})
    if "aperture" in methods:
        r = ModelAperturePhotometer(psf, background=ann).measure(image, x, y, catalog=cat)
        out["aperture"] = (r.flux, r.flux_err, None)
    if "optimal" in methods:
        r = OptimalPhotometer(psf, background=ann, **nocal).measure(image, x, y, catalog=cat)
        out["optimal"] = (r.flux, r.flux_err, None)
    if "optimal_oracle" in methods:
        r = OptimalPhotometer(oracle=True, size=31).measure(image, x, y, model=model,
                                                            bkg_true=bt)
        # the oracle estimates the in-stamp model flux: scale to the total
        frac = model.sum((1, 2)) / np.asarray(cat["flux_true"])
        out["optimal_oracle"] = (r.flux / frac, r.flux_err / frac, None)
    if "profile_fit" in methods:
        r = ProfileFitPhotometer(psf, background=ann).measure(image, x, y, catalog=cat)
        out["profile_fit"] = (r.flux, r.flux_err, None)
    return out


def evaluate_photometry(model="lumos-paus", *, n_objects: int = 4000, seed: int = 123,
                        config=None, output_dir=None, overwrite: bool = False,
                        quiet: bool = False, methods=PHOT_METHODS, blending: bool = True,
                        n_blend: int = 100, estimator: str | None = None) -> dict:
    """Benchmark photometers on held-out simulations as Lumos §5 does.

    ``estimator``: Lumos' point estimate (mode, mean, median; default the model card's).
    Returns a dict of Tables: ``by_mag`` (method, mag bin, n, bias, sigma68 of (f - f0)/f0;
    Fig. 7), ``summary`` (per method: bias for i < 22, sigma68 for i > 21, sigma68[D] of the
    duplicates, and for Lumos the PIT KS p-value), ``pit`` (histogram, Fig. 6) and ``blending``
    (method, R, bias and sigma68 of the i = 22 target's flux error; Figs. 8-9).
    """
    from .config import load_config
    from .metrics import bias, pit_gaussian_mixture, pit_histogram, pit_uniformity, scatter
    from .photometry.lumos import LumosPhotometer
    from .progress import progress
    from .simulate.galaxies import GalaxySimSettings

    cfg = config or load_config("paus")
    lumos = {"lumos": LumosPhotometer(model, estimator=estimator)}
    if "lumos_nomag" in methods:
        if lumos["lumos"].settings.prior_free_fraction > 0:
            lumos["lumos_nomag"] = LumosPhotometer(model, use_mag=False, name="lumos_nomag",
                                                   estimator=estimator)
        else:  # a model trained without magnitude dropout has no data-only mode
            methods = tuple(m for m in methods if m != "lumos_nomag")
    settings = GalaxySimSettings.from_config(
        lumos["lumos"].card.get("inputs", {}).get("simulation", {}))
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
    fields, psf = _test_fields(n_objects, cfg, settings, seed)
    res: dict[str, list] = {m: [] for m in methods}
    truth = []
    for image, cat, mdl, bt, ctx in progress(fields, desc="measuring", quiet=quiet,
                                             unit="image"):
        r = _run_methods(image, cat, mdl, bt, psf, lumos, methods, context=ctx)
        for m in methods:
            res[m].append(r[m])
        truth.append(cat)
    tr = vstack(truth)
    f0 = np.asarray(tr["flux_true"])
    mag = np.asarray(tr["mag"])
    edges = np.arange(18.0, 23.5, 0.5)
    rows, summ, pit_rows = [], [], []
    pit_cols: dict[str, np.ndarray] = {}
    for m in methods:
        f = np.concatenate([r[0] for r in res[m]])
        e = np.concatenate([r[1] for r in res[m]])
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (mag >= lo) & (mag < hi) & np.isfinite(f)
            if sel.sum() >= 5:
                rows.append({"method": m, "mag_lo": lo, "mag_hi": hi, "n": int(sel.sum()),
                             "bias": bias(f[sel], f0[sel]), "sigma68": scatter(f[sel], f0[sel])})
        ok = np.isfinite(f)
        t = Table({"id": tr["id"], "image": tr["image"], "band": tr["band"], "flux": f,
                   "flux_err": e})
        dup = duplicates_from_table(t[ok & (e > 0)], id_col="id")
        row = {"method": m, "n": int(ok.sum()),
               "bias_i_lt_22": bias(f[ok & (mag < 22)], f0[ok & (mag < 22)]),
               "sigma68_i_gt_21": scatter(f[ok & (mag > 21)], f0[ok & (mag > 21)]),
               "sigma68_all": scatter(f[ok], f0[ok]),
               "sigma68_D": sigma68(dup) if len(dup) else np.nan, "pit_ks_p": np.nan}
        if m in LUMOS_MODES:
            ex = [r[2] for r in res[m]]
            a = np.concatenate([np.column_stack([x[f"a{i}"] for i in range(1, 6)]) for x in ex])
            mu = np.concatenate([np.column_stack([x[f"f{i}"] for i in range(1, 6)]) for x in ex])
            sg = np.concatenate([np.column_stack([x[f"s{i}"] for i in range(1, 6)]) for x in ex])
            pit = pit_gaussian_mixture(a[ok], mu[ok], sg[ok], f0[ok], lower=lumos[m].lower)
            row["pit_ks_p"] = pit_uniformity(pit).pvalue
            counts, pedges = pit_histogram(pit, bins=10)
            pit_cols.setdefault("lo", pedges[:-1])
            pit_cols.setdefault("hi", pedges[1:])
            pit_cols[m] = counts
            # per magnitude: a calibration that is flat overall may err in opposite directions
            # at the bright and faint ends (median PIT > 0.5: the truth above the PDF's median)
            pm = mag[ok]
            for lo, hi in PIT_MAG_BINS:
                sel = (pm >= lo) & (pm < hi) & np.isfinite(pit)
                if sel.sum() >= 20:
                    pit_rows.append({"method": m, "mag_lo": lo, "mag_hi": hi,
                                     "n": int(sel.sum()),
                                     "median_pit": float(np.median(pit[sel])),
                                     "pit_ks_p": pit_uniformity(pit[sel]).pvalue})
        summ.append(row)
    out_t = {"by_mag": Table(rows=rows), "summary": Table(rows=summ)}
    if pit_cols:
        out_t["pit"] = Table(pit_cols)
        out_t["pit_by_mag"] = Table(rows=pit_rows)
    if blending:
        out_t["blending"] = blending_test(
            lumos, cfg, settings, psf, seed=seed + 1, n_per_r=n_blend,
            methods=(*(m for m in LUMOS_MODES if m in methods), "aperture", "optimal"))
    if output_dir is not None:
        for k, v in out_t.items():
            write_table(v, out / f"evaluate_photometry_{k}.csv", overwrite=overwrite)
        _photometry_plots(out_t, out / "evaluate_photometry.png", overwrite=overwrite)
    return out_t


#: magnitude bins of the per-magnitude PIT (``evaluate_photometry``'s ``pit_by_mag``)
PIT_MAG_BINS = ((18.0, 20.0), (20.0, 21.0), (21.0, 22.0), (22.0, 23.5))


def _photometry_plots(res: dict, path: Path, *, overwrite: bool = False) -> None:
    """One PNG: bias and sigma68 of (f - f0)/f0 against magnitude per method (Lumos Fig. 7),
    the PIT histograms of the Lumos modes (Fig. 6) and the blending test (Figs. 8-9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import check_output

    check_output(path, overwrite=overwrite)
    bm = res["by_mag"]
    panels = 3 + ("pit" in res) + ("blending" in res)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.0), constrained_layout=True)
    methods = list(dict.fromkeys(np.asarray(bm["method"]).astype(str)))
    for m in methods:
        t = bm[np.asarray(bm["method"]).astype(str) == m]
        mid = 0.5 * (np.asarray(t["mag_lo"]) + np.asarray(t["mag_hi"]))
        axes[0].plot(mid, t["bias"], "o-", ms=3, label=m)
        axes[1].plot(mid, t["sigma68"], "o-", ms=3, label=m)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("bias: median (f - f0) / f0")
    axes[1].set_ylabel("sigma68 of (f - f0) / f0")
    axes[1].set_yscale("log")
    for ax in axes[:2]:
        ax.set_xlabel("reference magnitude")
    axes[0].legend(fontsize=8)
    axes[0].set_title("bias (Lumos Fig. 7)")
    axes[1].set_title("scatter (Lumos Fig. 7)")
    sm = res["summary"]
    axes[2].bar(np.asarray(sm["method"]).astype(str), sm["sigma68_D"], color="0.6")
    axes[2].axhline(1.0, color="k", ls="--", lw=0.8)
    axes[2].set_ylabel("sigma68[D]")
    axes[2].set_title("duplicates test")
    axes[2].tick_params(axis="x", rotation=60)
    k = 3
    if "pit" in res:
        pt = res["pit"]
        edges = np.r_[np.asarray(pt["lo"]), np.asarray(pt["hi"])[-1]]
        for c in pt.colnames:
            if c not in ("lo", "hi"):
                cnt = np.asarray(pt[c], float)
                axes[k].stairs(cnt / cnt.sum() * len(cnt), edges, label=c)
        axes[k].axhline(1.0, color="k", ls="--", lw=0.8)
        axes[k].set_xlabel("PIT")
        axes[k].set_ylabel("density")
        axes[k].set_title("PIT (Lumos Fig. 6)")
        axes[k].legend(fontsize=8)
        k += 1
    if "blending" in res:
        bl = res["blending"]
        for m in dict.fromkeys(np.asarray(bl["method"]).astype(str)):
            t = bl[np.asarray(bl["method"]).astype(str) == m]
            axes[k].plot(t["R"], t["bias"], "o-", ms=3, label=m)
        axes[k].axhspan(-0.1, 0.1, color="0.9")
        axes[k].set_xlabel("neighbour distance R [px]")
        axes[k].set_ylabel("median (f - f0) / f0 of the i = 22 target")
        axes[k].set_ylim(-1, 3)
        axes[k].set_title("blending (Lumos Figs. 8-9)")
        axes[k].legend(fontsize=8)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def blending_test(lumos, cfg, settings, psf, *, seed: int = 0, radii=(0, 2, 5, 8, 12, 16, 20),
                  n_per_r: int = 100, methods=("lumos", "aperture"), spacing: float = 72.0
                  ) -> Table:
    """Lumos Figs. 8-9: an i = 22 target with an i = 20 neighbour at R px; relative flux error
    of the target (bias = median, its standard error ``bias_se``, and sigma68) per method and R.

    ``lumos``: dict of photometers by method name (:data:`LUMOS_MODES`).  Targets sit on a
    jittered grid of held-out simulator exposures, at positions with no catalogued source
    within ``settings.empty_radius`` of the target or the neighbour; both galaxies get a band
    colour drawn with ``settings.colour_scatter`` (the target's flux is not its magnitude's).
    Exposures are simulated until every R has ``n_per_r`` targets.
    """
    from scipy.spatial import cKDTree

    from .metrics import bias, median_standard_error, scatter
    from .simulate.galaxies import band_system_catalog
    from .simulate.trainingdata import simulated_exposures

    rng = np.random.default_rng(seed)
    radii = tuple(float(r) for r in radii)
    need = len(radii) * int(n_per_r)
    per_r = {r: {m: [] for m in methods} for r in radii}
    truth: dict[float, list] = {r: [] for r in radii}
    shape = {"r50": 2.5, "sersic_n": 1.0, "ba": 0.7, "theta": 30.0}
    count = dict.fromkeys(radii, 0)
    batch_seed = seed
    while sum(count.values()) < need:
        exps, fieldcat = simulated_exposures(4, config=cfg.simulate, seed=batch_seed)
        fieldcat = band_system_catalog(fieldcat, cfg.simulate, settings)
        batch_seed += 1
        for image, cat_xy, bg, _t in exps:
            if sum(count.values()) >= need:
                break
            ny, nx = image.shape
            gx, gy = np.meshgrid(np.arange(spacing, nx - spacing / 2, spacing),
                                 np.arange(spacing, ny - spacing / 2, spacing))
            x = gx.ravel() + rng.uniform(-8, 8, gx.size)
            y = gy.ravel() + rng.uniform(-8, 8, gy.size)
            pending = np.repeat(radii, [n_per_r - count[r] for r in radii])
            R = pending[np.linspace(0, len(pending) - 1, min(len(x), len(pending))).astype(int)]
            x, y = x[:len(R)], y[:len(R)]
            ang = rng.uniform(0, 2 * np.pi, len(R))
            xn, yn = x + R * np.cos(ang), y + R * np.sin(ang)
            tree = cKDTree(np.column_stack(cat_xy))
            free = ((tree.query(np.column_stack([x, y]))[0] > settings.empty_radius)
                    & (tree.query(np.column_stack([xn, yn]))[0] > settings.empty_radius))
            x, y, xn, yn, R = x[free], y[free], xn[free], yn[free], R[free]
            for r in radii:  # no more than n_per_r per R
                drop = np.flatnonzero(R == r)[max(n_per_r - count[r], 0):]
                R[drop] = np.nan
            keep = np.isfinite(R)
            x, y, xn, yn, R = x[keep], y[keep], xn[keep], yn[keep], R[keep]
            for r in R:
                count[float(r)] += 1
            m = len(x)
            if m == 0:
                continue
            g = {k: np.full(m, v) for k, v in shape.items()}
            f_t, model, bt = _inject(image, bg, x, y, {**g, "mag": np.full(m, 22.0)}, settings,
                                     psf, rng)
            _inject(image, bg, xn, yn, {**g, "mag": np.full(m, 20.0)}, settings, psf, rng)
            cat = Table({"x": x, "y": y, "mag": np.full(m, 22.0), "flux_true": f_t, **g})
            nbs = Table({"x": xn, "y": yn, "mag": np.full(m, 20.0), **g})  # catalogued too
            r = _run_methods(image, cat, model, bt, psf, lumos, methods,
                             context=_context(cat_xy, fieldcat, nbs))
            for j, rr in enumerate(R):
                truth[rr].append(f_t[j])
                for mth in methods:
                    per_r[rr][mth].append(r[mth][0][j])
    rows = []
    for rr in radii:
        t0 = np.asarray(truth[rr])
        for mth in methods:
            f = np.asarray(per_r[rr][mth])
            ok = np.isfinite(f)
            s68 = scatter(f[ok], t0[ok]) if ok.sum() > 2 else np.nan
            rows.append({"method": mth, "R": rr, "n": int(ok.sum()),
                         "bias": bias(f[ok], t0[ok]) if ok.sum() else np.nan,
                         "sigma68": s68,
                         # large-sample standard error of the median: is a 10 % offset resolved?
                         "bias_se": median_standard_error(s68, int(ok.sum()))})
    return Table(rows=rows)


def print_photometry_summary(res: dict) -> None:
    """Print the benchmark tables."""
    for k in ("summary", "by_mag", "blending", "pit", "pit_by_mag"):
        if k in res:
            t = res[k]
            for c in t.colnames:
                if t[c].dtype.kind == "f":
                    t[c].format = ".4f"
            print(f"\n== {k} ==")
            t.pprint_all()
