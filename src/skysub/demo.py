"""``skysub demo``: simulate PAUS-like exposures with scattered light, estimate the background
under every source with three classical methods, and compare with the truth.

Steps (each a public skysub function, so the demo doubles as a worked example):

1. :func:`skysub.simulate.ccd.simulate_survey` -- repeated exposures of one field in several
   bands x 2 camera epochs, with edge-dominated scattered light that varies per exposure.
2. :func:`skysub.workflows.build_templates` -- templates from the first exposures of each
   band x epoch (BKGnet eq. 1).
3. :func:`skysub.workflows.measure_background` on the remaining exposures with the annulus
   (PAUS: median of a 3-sigma-clipped r = 30-45 px annulus), the annulus after template
   correction (eq. 2), the SExtractor-style mesh map and the shipped BKGnet model
   (``bkgnet-paus``, trained on simulated exposures of other fields).
4. :func:`skysub.metrics.background_summary` against the noise-free truth: sigma68 of the
   relative error for all / edge / centre sources, bias, pull width.

Outputs in the demo folder: ``sim/`` (images, catalog.csv, truth.csv), ``templates.fits``,
``background_<method>.csv``, ``demo_table.csv`` and ``demo.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from astropy.table import Table, join, vstack

from .config import load_config
from .evaluate import print_summary
from .io import read_image, write_table
from .metrics import background_summary
from .progress import progress

EDGE_WIDTH = 75.0  # px: a source closer than this to a CCD edge counts as an "edge" source



def run_demo(out: Path = Path("skysub-demo"), *, seed: int = 1, quick: bool = False,
             quiet: bool = False) -> Table:
    """Run the demo; return the summary table (also written to ``out/demo_table.csv``)."""
    from .simulate.ccd import CCDSimConfig, simulate_survey
    from .workflows import build_templates, make_background, measure_background

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("paus")
    section = dict(cfg.simulate)
    n_build, n_eval = (3, 1) if quick else (8, 2)
    if quick:
        section["bands"] = section["bands"][:1]
        section["shape"] = [256, 512]
        section["n_galaxies"] = 80
        section["n_stars"] = 10
        section["n_faint"] = 150
    sim_cfg = CCDSimConfig(**section)
    n_keys = len(sim_cfg.bands) * len(sim_cfg.epochs)
    n_exp = n_keys * (n_build + n_eval)
    say = (lambda *a: None) if quiet else print
    say(f"skysub demo: simulating {n_exp} PAUS-like exposures ({len(sim_cfg.bands)} bands x "
        f"{len(sim_cfg.epochs)} epochs, {sim_cfg.shape[1]}x{sim_cfg.shape[0]} px) in {out}/sim")
    simulate_survey(out / "sim", sim_cfg, n_exposures=n_exp, seed=seed, overwrite=True,
                    progress=not quiet)
    truth = Table.read(out / "sim" / "truth.csv", format="ascii.csv")
    catalog = out / "sim" / "catalog.csv"

    # split each band x epoch into template-building and evaluation exposures
    paths = sorted((out / "sim" / "images").glob("*.fits"))
    by_key: dict[tuple, list[Path]] = {}
    for p in paths:
        im = read_image(p, keys=cfg.header)
        by_key.setdefault(im.meta.key, []).append(p)
    build = [p for v in by_key.values() for p in v[:n_build]]
    evaluate = [p for v in by_key.values() for p in v[n_build:]]
    say(f"building scattered-light templates from {len(build)} exposures; evaluating on "
        f"{len(evaluate)}")
    slt = build_templates(build, catalog, config=cfg, quiet=quiet, keys=cfg.header)
    slt.save(out / "templates.fits", overwrite=True)

    methods = {
        "annulus": make_background("annulus", config=cfg),
        "annulus+templates": make_background("templates", config=cfg, templates=slt),
        "mesh": make_background("mesh", config=cfg),
    }
    from .nn.modelfile import shipped_models

    if "bkgnet-paus" in shipped_models():  # the learned estimator (trained on other fields)
        methods["bkgnet"] = make_background("bkgnet", config=cfg, model="bkgnet-paus")
    results = []
    for name, est in progress(methods.items(), desc="methods", quiet=quiet):
        t = measure_background(evaluate, catalog, est, quiet=True, keys=cfg.header)
        write_table(t, out / f"background_{name.replace('+', '_')}.csv", overwrite=True)
        t = join(t, truth["image", "id", "bkg_true", "edge_distance", "band"],
                 keys=["image", "id"])
        t["method"] = name
        results.append(t)
    allres = vstack(results, metadata_conflicts="silent")
    allres = allres[np.isfinite(allres["bkg"])]
    allres["region"] = np.where(allres["edge_distance"] < EDGE_WIDTH, "edge", "centre")
    rows = []
    for name in methods:
        sel = allres[allres["method"] == name]
        s = background_summary(sel["bkg"], sel["bkg_true"], sel["bkg_err"],
                               groups=np.asarray(sel["region"]))
        s["method"] = name
        rows.append(s)
    summary = vstack(rows, metadata_conflicts="silent")
    if "group" in summary.colnames:
        order = {"all": 0, "edge": 1, "centre": 2}
        summary = summary[np.argsort([10 * list(methods).index(m) + order.get(g, 3)
                                      for m, g in zip(summary["method"], summary["group"],
                                                      strict=True)], kind="stable")]
    write_table(summary, out / "demo_table.csv", overwrite=True)
    _figure(out / "demo.png", evaluate[0], slt, allres, cfg)
    if not quiet:
        print()
        print("Background under each source against the noise-free truth "
              "(relative error = (bkg - true) / true):")
        print_summary(summary)
        print()
        print(f"edge = within {EDGE_WIDTH:.0f} px of a CCD edge.  pull = (bkg - true) / bkg_err; "
              "its sigma68 should be 1.")
        print(f"wrote {out}/demo_table.csv, {out}/demo.png, {out}/templates.fits, "
              f"{out}/background_*.csv  ({time.perf_counter() - t0:.0f} s)")
    return summary


def _figure(path: Path, image_path: Path, slt, res: Table, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    im = read_image(image_path, keys=cfg.header)
    tmpl = slt.template(*im.meta.key)
    methods = list(dict.fromkeys(res["method"]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    ax = axes[0, 0]
    v = np.where(im.mask, np.nan, im.data)
    lo, hi = np.nanpercentile(v, [1, 99])
    a = ax.imshow(v, origin="lower", cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(f"exposure {im.name}")
    fig.colorbar(a, ax=ax, label="ADU")
    ax = axes[0, 1]
    t_lo, t_hi = np.nanpercentile(tmpl, [0.5, 99.5])  # hot pixels would set the colour scale
    a = ax.imshow(tmpl, origin="lower", cmap="magma", vmin=t_lo, vmax=t_hi)
    ax.set_title(f"scattered-light template {im.meta.band} / {im.meta.epoch}")
    fig.colorbar(a, ax=ax, label="SLT (centre = 1)")
    ax = axes[0, 2]
    for m in methods:
        s = res[res["method"] == m]
        rel = (s["bkg"] - s["bkg_true"]) / s["bkg_true"]
        bins = np.linspace(0, np.nanmax(res["edge_distance"]), 12)
        idx = np.digitize(s["edge_distance"], bins)
        xs, ys = [], []
        for k in range(1, len(bins)):
            r = rel[idx == k]
            if len(r) > 5:
                xs.append(0.5 * (bins[k - 1] + bins[k]))
                ys.append((np.percentile(r, 84) - np.percentile(r, 16)) / 2)
        ax.plot(xs, ys, "o-", label=m)
    ax.set_xlabel("distance to nearest CCD edge [px]")
    ax.set_ylabel("sigma68 of relative error")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("error against distance to the edge")
    shown = [m for m in methods if m != "mesh"] if "bkgnet" in methods else methods
    for ax, m in zip(axes[1], shown[:3], strict=False):
        s = res[res["method"] == m]
        rel = (s["bkg"] - s["bkg_true"]) / s["bkg_true"]
        lim = max(np.nanpercentile(np.abs(rel), 95), 1e-4)
        sc = ax.scatter(s["x"], s["y"], c=rel, s=6, cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_title(f"{m}: relative error vs CCD position")
        ax.set_xlim(0, im.shape[1])
        ax.set_ylim(0, im.shape[0])
        ax.set_aspect("equal")
        fig.colorbar(sc, ax=ax, label="(bkg - true) / true")
    fig.savefig(path, dpi=90)
    plt.close(fig)
