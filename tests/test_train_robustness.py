"""`skysub train lumos|bkgnet` on odd frame sets (issue 23): an all-NaN frame (and all frames
NaN), a NaN chip over most of every frame, a frame smaller than a stamp, raw uint16 frames
(BZERO/BSCALE), one frame in units 1e4 times the others', a frame no catalogue source falls
on, catalogue positions all off the frames, an empty catalogue, a catalogue column of strings,
a single exposure, a 3-D cube.

Each case must either train (exit 0, a model file written) or exit 2 with exactly one
``skysub train: error: ...`` line naming what is wrong -- never a traceback, never the
catch-all "training failed unexpectedly" (an unhandled exception in disguise) -- and the
input files are never modified.  Tiny settings keep each run to a few seconds.
"""

import hashlib
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from simframes import simulated_frames

from skysub.cli import main


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust")
    paths, cat = simulated_frames(out, 3, (200, 160), 11)
    cfg = out / "tiny.toml"
    cfg.write_text('base = "generic"\n[lumos]\nstamps_per_image = 150\nepochs = 1\n'
                   'batch_size = 32\ncalibration_injections = 100\n'
                   '[bkgnet]\nstamp_size = 64\nstamps_per_image = 150\nepochs = 1\n'
                   'batch_size = 32\n')  # 64 px BKGnet stamps: trained from scratch, fast
    return paths, cat, cfg


def _copy(paths, d):
    d.mkdir(exist_ok=True)
    out = []
    for p in paths:
        shutil.copy(p, d / p.name)
        out.append(d / p.name)
    return out


def _rewrite(path, data, **cards):
    with fits.open(path) as h:
        hdr = h[0].header.copy()
    for k in ("BZERO", "BSCALE", "BITPIX", "NAXIS3"):
        hdr.remove(k, ignore_missing=True)
    hdr.update(cards)
    fits.PrimaryHDU(data, header=hdr).writeto(path, overwrite=True)


# -- the cases: (paths, catalogue) built in d; the words a one-line error must name ----------
def all_nan(paths, cat, d):
    fp = _copy(paths, d)
    with fits.open(fp[0], mode="update") as h:
        h[0].data[:] = np.nan
    return fp, cat, [fp[0].name]


def every_frame_nan(paths, cat, d):
    fp = _copy(paths, d)
    for q in fp:
        with fits.open(q, mode="update") as h:
            h[0].data[:] = np.nan
    return fp, cat, ["cutouts", "stamps"]


def nan_chip(paths, cat, d):
    fp = _copy(paths, d)
    for q in fp:  # a blank chip stored as NaN over 85 % of every frame
        with fits.open(q, mode="update") as h:
            h[0].data[:, 30:] = np.nan
    return fp, cat, [fp[0].name, "NaN", "masked", "stamp"]


def tiny(paths, cat, d):
    d.mkdir()
    q = d / "tiny.fits"
    with fits.open(paths[0]) as h:
        fits.PrimaryHDU(h[0].data[:40, :40], header=h[0].header.copy()).writeto(q)
    return [q], cat, ["tiny.fits"]


def raw_uint16(paths, cat, d):
    fp = _copy(paths, d)
    for i, q in enumerate(fp):  # raw CCD data: integers, stored with BZERO (and a BSCALE)
        data = fits.getdata(q)
        hdu = fits.PrimaryHDU(np.clip(np.round(data), 0, 65535).astype(np.float64),
                              header=fits.getheader(q))
        hdu.scale("int16", bzero=32768, bscale=1.0 if i else 2.0)
        hdu.writeto(q, overwrite=True)
    assert fits.getheader(fp[1])["BZERO"] == 32768
    return fp, cat, [fp[0].name]


def units_1e4(paths, cat, d):
    fp = _copy(paths, d)
    with fits.open(fp[0], mode="update") as h:  # the header not updated to match
        h[0].data = h[0].data * 1e4
    return fp, cat, [fp[0].name]


def no_source_on_a_frame(paths, cat, d):
    fp = _copy(paths, d)
    with fits.open(fp[0], mode="update") as h:  # the frame points 10 deg away
        h[0].header["CRVAL2"] = h[0].header["CRVAL2"] + 10.0
    return fp, cat, [fp[0].name]


def positions_off_frames(paths, cat, d):
    d.mkdir()
    t = Table.read(cat, format="ascii.csv")
    t.remove_columns([c for c in ("ra", "dec") if c in t.colnames])
    t["x"] = np.linspace(5000.0, 9000.0, len(t))
    t["y"] = -3000.0
    q = d / "offcat.csv"
    t.write(q, format="ascii.csv")
    return paths, q, ["offcat.csv"]


def string_column(paths, cat, d):
    d.mkdir()
    t = Table.read(cat, format="ascii.csv")
    t["mag"] = np.array(["faint"] * len(t))
    q = d / "strcat.csv"
    t.write(q, format="ascii.csv")
    return paths, q, ["mag"]


def string_positions(paths, cat, d):
    d.mkdir()
    t = Table.read(cat, format="ascii.csv")
    t["ra"] = np.array([f"{v:.6f}h" for v in t["ra"]])
    q = d / "strpos.csv"
    t.write(q, format="ascii.csv")
    return paths, q, ["ra"]


def empty_catalogue(paths, cat, d):
    d.mkdir()  # (train bkgnet crashed on it: no neighbour with a magnitude to inject)
    t = Table.read(cat, format="ascii.csv")[:0]
    q = d / "empty.csv"
    t.write(q, format="ascii.csv")
    return paths, q, ["empty.csv"]


def single_exposure(paths, cat, d):
    return paths[:1], cat, [paths[0].name]


def cube(paths, cat, d):
    fp = _copy(paths, d)
    data = fits.getdata(fp[0])
    _rewrite(fp[0], np.stack([data, data]))
    return fp, cat, [fp[0].name]


CASES = [all_nan, every_frame_nan, nan_chip, tiny, raw_uint16, units_1e4, no_source_on_a_frame,
         positions_off_frames, string_column, string_positions, empty_catalogue,
         single_exposure, cube]


def _digest(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize("network", ["lumos", "bkgnet"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_train_gives_a_model_or_one_line_error(frames, capsys, tmp_path, network, case):
    paths, cat, cfg = frames
    fp, fcat, names = case(paths, cat, tmp_path / "in")
    before = _digest([*fp, fcat])
    out = tmp_path / "m.pt"
    args = ["train", network, *map(str, fp), "--catalog", str(fcat), "--output", str(out),
            "--config", str(cfg), "--seed", "1", "--quiet", "--device", "cpu", "--threads",
            "1"]
    if network == "lumos":
        args.append("--allow-poor")  # a 1-epoch model: its quality gate is not the point here
    capsys.readouterr()
    rc = main(args)  # an exception escaping main fails the test with its traceback
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert "failed unexpectedly" not in err, err
    assert _digest([*fp, fcat]) == before  # inputs untouched
    if rc == 0:
        assert out.exists() and out.with_suffix(".json").exists(), err
        return
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("skysub train: error:")]
    assert len(lines) == 1, err
    assert err.rstrip().splitlines()[-1] == lines[0], err  # the message is one line
    assert any(n in lines[0] for n in names), (names, lines[0])
    assert not out.exists()


def test_lumos_frame_smaller_than_a_stamp_is_an_error_naming_it(frames, capsys, tmp_path):
    """(BKGnet trains on it, its stamps padded, with warnings that the model is not to be
    trusted.)"""
    paths, cat, cfg = frames
    fp, fcat, _ = tiny(paths, cat, tmp_path / "in")
    rc = main(["train", "lumos", str(fp[0]), "--catalog", str(fcat), "--output",
               str(tmp_path / "m.pt"), "--config", str(cfg), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "tiny.fits is 40 x 40 px, smaller than a 60 px stamp" in err, err
