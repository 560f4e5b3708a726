"""End-to-end: the `skysub` command on a small simulation, and its errors on bad input."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table, join

from skysub.cli import main
from skysub.metrics import bias, scatter


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    rc = main(["simulate", "ccd", "--output", str(out), "--n-exposures", "18", "--size", "384",
               "256", "--seed", "3", "--quiet", "--config", "paus"])
    assert rc == 0
    return out


def _run(*args):
    return main([str(a) for a in args])


def test_simulate_writes_images_catalog_truth(sim):
    images = sorted((sim / "images").glob("*.fits"))
    assert len(images) == 18
    cat = Table.read(sim / "catalog.csv", format="ascii.csv")
    truth = Table.read(sim / "truth.csv", format="ascii.csv")
    assert {"id", "ra", "dec", "mag"} <= set(cat.colnames)
    assert {"image", "id", "x", "y", "bkg_true", "flux_true"} <= set(truth.colnames)
    h = fits.getheader(images[0])
    assert h["NAXIS1"] == 384 and h["NAXIS2"] == 256
    for key in ("FILTER", "EPOCH", "EXPTIME", "GAIN", "RDNOISE", "CTYPE1"):
        assert key in h


def test_background_annulus_against_truth(sim, tmp_path):
    out = tmp_path / "bkg.csv"
    rc = _run("background", *sorted((sim / "images").glob("*.fits")), "--catalog",
              sim / "catalog.csv", "--method", "annulus", "--r-in", 20, "--r-out", 35,
              "--config", "paus", "--output", out, "--quiet")
    assert rc == 0
    t = Table.read(out, format="ascii.csv")
    assert t.colnames[:7] == ["image", "id", "x", "y", "bkg", "bkg_err", "flags"]
    truth = Table.read(sim / "truth.csv", format="ascii.csv")
    j = join(t, truth["image", "id", "bkg_true", "edge_distance"], keys=["image", "id"])
    assert len(j) == len(truth)  # every catalogued source on every image has a row
    centre = (j["edge_distance"] > 60) & np.isfinite(j["bkg"])
    # centre sources: sky to ~1 % (faint uncatalogued galaxies bias the median up a little)
    assert scatter(j["bkg"][centre], j["bkg_true"][centre]) < 0.012
    assert 0.0 < bias(j["bkg"][centre], j["bkg_true"][centre]) < 0.03


def test_mesh_map_and_templates_roundtrip(sim, tmp_path):
    img = sorted((sim / "images").glob("*.fits"))[0]
    out, mp = tmp_path / "bkg.ecsv", tmp_path / "map.fits"
    assert _run("background", img, "--catalog", sim / "catalog.csv", "--method", "mesh",
                "--map", mp, "--output", out, "--quiet") == 0
    with fits.open(mp) as hdul:
        assert hdul[0].data.shape == (256, 384)
        assert "RMS" in hdul and hdul[0].header["CTYPE1"].startswith("RA")
    slt = tmp_path / "slt.fits"
    imgs = sorted((sim / "images").glob("*.fits"))
    assert _run("templates", "build", *imgs, "--catalog", sim / "catalog.csv", "--output",
                slt, "--quiet", "--config", "paus") == 0
    out2 = tmp_path / "bkg_slt.csv"
    assert _run("background", *imgs, "--catalog", sim / "catalog.csv", "--method",
                "templates", "--templates", slt, "--output", out2, "--quiet",
                "--config", "paus") == 0
    assert len(Table.read(out2, format="ascii.csv")) > 0


def test_photometry_command(sim, tmp_path):
    out = tmp_path / "phot.csv"
    imgs = sorted((sim / "images").glob("*.fits"))[:2]
    assert _run("photometry", *imgs, "--catalog", sim / "catalog.csv", "--photometer",
                "aperture", "--background", "annulus", "--radius", 6, "--output", out,
                "--quiet", "--config", "paus") == 0
    t = Table.read(out, format="ascii.csv")
    assert t.colnames[:9] == ["image", "id", "x", "y", "flux", "flux_err", "bkg", "bkg_err",
                              "flags"]
    truth = Table.read(sim / "truth.csv", format="ascii.csv")
    j = join(t, truth["image", "id", "flux_true", "kind", "edge_distance"], keys=["image", "id"])
    stars = j[(j["kind"] == "star") & (j["flags"] == 0)]
    if len(stars) >= 3:  # bright isolated stars: r = 6 px holds most of the PSF light
        ratio = np.median(stars["flux"] / stars["flux_true"])
        assert 0.85 < ratio < 1.02


def test_refuses_to_overwrite(sim, tmp_path, capsys):
    img = sorted((sim / "images").glob("*.fits"))[0]
    out = tmp_path / "bkg.csv"
    out.write_text("precious")
    rc = _run("background", img, "--catalog", sim / "catalog.csv", "--output", out)
    assert rc == 2 and "overwrite" in capsys.readouterr().err
    assert out.read_text() == "precious"
    rc = _run("background", img, "--catalog", sim / "catalog.csv", "--output", img,
              "--overwrite")
    assert rc == 2
    assert fits.getdata(img).shape == (256, 384)  # the input is untouched


def test_clear_errors(sim, tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert _run("background", tmp_path / "nope.fits", "--catalog", sim / "catalog.csv",
                "--output", out) == 2
    assert "nope.fits" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    Table({"id": [1], "flux": [2.0]}).write(bad, format="ascii.csv")
    img = sorted((sim / "images").glob("*.fits"))[0]
    assert _run("background", img, "--catalog", bad, "--output", out) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "x" in err and "ra" in err
    nowcs = tmp_path / "nowcs.fits"
    fits.writeto(nowcs, np.ones((50, 50)))
    assert _run("background", nowcs, "--catalog", sim / "catalog.csv", "--output", out) == 2
    assert "WCS" in capsys.readouterr().err
    assert _run("background", img, "--catalog", sim / "catalog.csv", "--method", "templates",
                "--output", out) == 2
    assert "--templates" in capsys.readouterr().err
    assert _run("background", img, "--catalog", sim / "catalog.csv", "--exptime", "-3",
                "--output", out) == 2
    assert "exptime" in capsys.readouterr().err.lower()


def test_big_endian_image_same_numbers(sim, tmp_path):
    img = sorted((sim / "images").glob("*.fits"))[0]
    with fits.open(img) as hdul:
        be = tmp_path / "be.fits"
        fits.PrimaryHDU(hdul[0].data.astype(">f8"), hdul[0].header).writeto(be)
    cat = Table.read(sim / "truth.csv", format="ascii.csv")
    cat = cat[cat["image"] == img.name]["id", "x", "y"]
    cat.write(tmp_path / "cat.csv", format="ascii.csv")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _run("background", img, "--catalog", tmp_path / "cat.csv", "--output", a, "-q") == 0
    assert _run("background", be, "--catalog", tmp_path / "cat.csv", "--output", b, "-q") == 0
    ta, tb = Table.read(a, format="ascii.csv"), Table.read(b, format="ascii.csv")
    np.testing.assert_array_equal(ta["bkg"], tb["bkg"])


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["background", "--help"])
    assert "examples:" in capsys.readouterr().out
