"""Diagnostic plots of the time-series pipeline (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from ..io import _atomic_write, check_output


def _figure(nrows: int = 1, ncols: int = 1, **kw):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=kw.pop("figsize", (4.0 * ncols, 3.2 * nrows)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a figure atomically (format from the suffix); refuses to replace a file unless
    ``overwrite``."""
    path = check_output(path, overwrite=overwrite)
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))


def header_times(frames: dict[str, Table], path: str | Path, **kw) -> Path:
    """Mid-exposure time of each frame and the gaps between frames, per camera."""
    fig, ax = _figure(1, 2, figsize=(9, 3.2))
    for cam, t in frames.items():
        mjd = np.asarray(t["mjd"], float)
        ax[0, 0].plot(np.arange(len(mjd)), (mjd - mjd.min()) * 86400, ".", ms=3, label=cam)
        if len(mjd) > 1:
            ax[0, 1].hist(np.diff(np.sort(mjd)) * 86400, bins=30, histtype="step", label=cam)
    ax[0, 0].set(xlabel="frame", ylabel="time since first frame [s]")
    ax[0, 1].set(xlabel="time between frames [s]", ylabel="frames")
    ax[0, 0].legend()
    return save(fig, path, **kw)


def catalogs(stacks: dict[str, np.ndarray], cats: dict[str, Table], path: str | Path,
             **kw) -> Path:
    """Stacked reference frame of each camera with its catalogue (ids at the sources)."""
    n = len(stacks)
    fig, ax = _figure(1, n, figsize=(4 * n, 4))
    for a, (cam, img) in zip(ax[0], stacks.items(), strict=True):
        lo, hi = np.nanpercentile(img, [1, 99.95])
        a.imshow(img, origin="lower", cmap="Greys_r", vmin=lo, vmax=hi)
        c = cats[cam]
        a.scatter(c["x"], c["y"], s=80, facecolors="none", edgecolors="tab:red", lw=0.8)
        for row in c:
            a.annotate(str(row["id"]), (row["x"], row["y"]), xytext=(6, 6),
                       textcoords="offset points", color="tab:red", fontsize=7)
        a.set_title(f"{cam}: {len(c)} sources")
    return save(fig, path, **kw)


def background(frames: dict[str, Table], path: str | Path, **kw) -> Path:
    """Median background and background RMS of every frame against time, per camera."""
    fig, ax = _figure(2, 1, figsize=(6, 5), sharex=True)
    for cam, t in frames.items():
        s = (np.asarray(t["mjd"], float) - np.min(t["mjd"])) * 86400
        ax[0, 0].plot(s, t["background"], ".", ms=3, label=cam)
        ax[1, 0].plot(s, t["rms"], ".", ms=3, label=cam)
    ax[0, 0].set(ylabel="background [counts]")
    ax[1, 0].set(ylabel="background RMS [counts]", xlabel="time since first frame [s]")
    ax[0, 0].legend()
    return save(fig, path, **kw)


def rms_vs_median(lcs: dict[str, list[Table]], path: str | Path, **kw) -> Path:
    """RMS of each light curve against its median flux, with the median ``flux_err`` (the
    expected scatter) for comparison."""
    fig, ax = _figure()
    a = ax[0, 0]
    for cam, tables in lcs.items():
        med, rms, err = [], [], []
        for t in tables:
            f = np.asarray(t["flux"], float)
            f = f[np.isfinite(f)]
            if len(f) < 2:
                continue
            med.append(np.median(f))
            rms.append(np.std(f))
            err.append(np.nanmedian(np.asarray(t["flux_err"], float)))
        line = a.plot(med, rms, "o", ms=4, label=f"{cam} rms")[0]
        a.plot(med, err, "_", ms=10, color=line.get_color())
    a.set(xscale="log", yscale="log", xlabel="median flux [counts]",
          ylabel="RMS [counts] (bars: median flux_err)")
    a.legend(fontsize=7)
    return save(fig, path, **kw)


def periodogram_plot(rel: Table, result, path: str | Path, *, title: str = "",
                     true_frequency: float | None = None, **kw) -> Path:
    """Relative light curve and its Lomb-Scargle periodogram."""
    fig, ax = _figure(2, 1, figsize=(6, 5))
    s = (np.asarray(rel["BMJD"], float) - np.min(rel["BMJD"])) * 86400
    ax[0, 0].errorbar(s, rel["rel_flux"], rel["rel_flux_err"], fmt=".", ms=3, lw=0.5)
    ax[0, 0].set(xlabel="time [s]", ylabel="relative flux", title=title)
    ax[1, 0].plot(result.frequency, result.power, lw=0.8)
    ax[1, 0].axvline(result.peak_frequency, color="tab:red", ls="--", lw=0.8,
                     label=f"peak {result.peak_frequency:.4f} Hz")
    if true_frequency is not None:
        ax[1, 0].axvline(true_frequency, color="k", ls=":", lw=0.8,
                         label=f"true {true_frequency:.4f} Hz")
    ax[1, 0].set(xlabel="frequency [Hz]", ylabel="Lomb-Scargle power")
    ax[1, 0].legend(fontsize=7)
    return save(fig, path, **kw)
