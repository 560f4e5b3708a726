"""Simulated CCD exposures with a zero-point keyword, as the user-frame CLI tests need them."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits

from skysub.cli import main

#: the simulator's zero point in image units: 25 (per second) + 2.5 log10(EXPTIME 100 / GAIN 1)
ZP = 30.0


def simulated_frames(out: Path, n: int, size: tuple[int, int], seed: int
                     ) -> tuple[list[Path], Path]:
    """``skysub simulate ccd`` (the paus configuration) into ``out / "sim"``, ``MAGZPT`` = ZP
    written into every exposure; returns the exposures and the catalogue."""
    assert main(["simulate", "ccd", "--output", str(out / "sim"), "--n-exposures", str(n),
                 "--size", str(size[0]), str(size[1]), "--seed", str(seed), "--quiet",
                 "--config", "paus"]) == 0
    paths = sorted((out / "sim" / "images").glob("*.fits"))
    for p in paths:
        with fits.open(p, mode="update") as h:
            h[0].header["MAGZPT"] = ZP
    return paths, out / "sim" / "catalog.csv"
