"""The injection–recovery figure: flux bias and scatter, pull width and background error per
SNR bin, one line per method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table


def recovery_figure(recovered: Table, summary: Table, path: str | Path, *,
                    title: str = "") -> Path:
    """Write a 2 x 2 PNG: relative flux error vs SNR (every source, median per bin), sigma68
    per bin, pull sigma68 per bin (1 is honest), and the background error in units of the pixel
    noise per bin.  Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import _atomic_write

    path = Path(path)
    fig, ax = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    bins = summary[summary["group"] == "bin"]
    methods = list(dict.fromkeys(np.asarray(summary["method"]).tolist()))
    for k, m in enumerate(methods):
        c = f"C{k % 10}"
        r = recovered[np.asarray(recovered["method"]) == m]
        ax[0, 0].scatter(r["snr"], r["rel_err"], s=4, alpha=0.3, color=c)
        b = bins[np.asarray(bins["method"]) == m]
        mid = np.sqrt(np.asarray(b["snr_lo"], float).clip(1e-3) *
                      np.asarray(b["snr_hi"], float).clip(max=1e4))
        ax[0, 0].plot(mid, b["bias"], "o-", color=c, label=m)
        ax[0, 1].plot(mid, b["sigma68"], "o-", color=c, label=m)
        ax[1, 0].plot(mid, b["pull_sigma68"], "o-", color=c, label=m)
        ax[1, 1].plot(mid, b["bkg_sigma68"], "o-", color=c, label=m)
    ax[0, 0].axhline(0, color="k", lw=0.8)
    ax[0, 0].set_ylim(-0.5, 0.5)
    ax[0, 0].set_ylabel("(flux - truth) / truth")
    ax[0, 1].set_ylabel("sigma68 of the relative flux error")
    ax[0, 1].set_yscale("log")
    ax[1, 0].axhspan(0.9, 1.1, color="0.85")
    ax[1, 0].axhline(1.0, color="k", lw=0.8)
    ax[1, 0].set_ylabel("pull sigma68  ((flux - truth) / flux_err)")
    ax[1, 1].set_ylabel("sigma68 of (bkg - bkg_true) / sky_sigma")
    for a in ax.ravel():
        a.set_xscale("log")
        a.set_xlabel("injected aperture SNR")
        a.legend(fontsize=8)
    if title:
        fig.suptitle(title)

    def write(tmp: Path) -> None:
        fig.savefig(tmp, dpi=90, format="png")

    try:
        _atomic_write(path, write)
    finally:
        plt.close(fig)
    return path
