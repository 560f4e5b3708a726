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
        j = join(p, tr[keep], keys=["image", "id"])
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
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    labels = list(joined)
    # relative error against CCD position (Fig. 8)
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
