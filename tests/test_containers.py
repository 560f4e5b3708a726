"""One adapter for image containers (skysub.image.as_image): every estimator and photometer
gives, for a masked array, CCDData, NDData and Quantity, the same numbers as for the bare array
with ``mask=``; units flow to the results; a WCS serves SkyCoord positions; an uncertainty
becomes the pixel variance."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.wcs import WCS
from numpy.testing import assert_allclose, assert_array_equal

from skysub.background.annulus import AnnulusBackground, CallableBackground
from skysub.background.mesh import MeshBackground
from skysub.background.templates import ScatteredLightTemplates, TemplateCorrected
from skysub.errors import InputError
from skysub.image import Image, ImageMeta, as_image
from skysub.photometry import (
    AperturePhotometer,
    ModelAperturePhotometer,
    OptimalPhotometer,
)
from skysub.photometry.profile_fit import ProfileFitPhotometer
from skysub.simulate.psf import gaussian_psf

SHAPE = (72, 80)
X = np.array([20.0, 40.3, 60.0, 25.0])
Y = np.array([20.0, 36.0, 50.7, 55.0])


def _scene():
    rng = np.random.default_rng(3)
    img = rng.normal(400.0, 5.0, SHAPE)
    psf = gaussian_psf(15, 3.0)
    for x, y in zip(X, Y, strict=True):
        xi, yi = int(round(x)), int(round(y))
        img[yi - 7:yi + 8, xi - 7:xi + 8] += 5000 * psf
    mask = np.zeros(SHAPE, bool)
    # garbage under the mask, in every annulus and mesh box it can reach: a dropped mask
    # gives a very different number
    for x, y in zip(X, Y, strict=True):
        xi, yi = int(round(x)), int(round(y))
        mask[yi + 9:yi + 13, xi - 2:xi + 3] = True
    img[mask] = 1e5
    return img, mask, psf


IMG, MASK, PSF = _scene()


def _bg():
    return AnnulusBackground(8.0, 14.0)


def _box_mean(data, position, a, b, theta):
    """An opticam-style function: NaN-mean and std of a 29x29 box (masked pixels are NaN)."""
    x, y = (int(round(v)) for v in position)
    box = data[max(y - 14, 0):y + 15, max(x - 14, 0):x + 15]
    return np.nanmean(box), np.nanstd(box)


def _templates():
    slt = ScatteredLightTemplates({("r", "a"): np.full(SHAPE, 1.01, np.float32)},
                                  {("r", "a"): 3})
    return TemplateCorrected(_bg(), slt, name="templates")


ESTIMATORS = {
    "annulus": _bg,
    "annulus_mean": lambda: AnnulusBackground(8.0, 14.0, statistic="mean"),
    "callable": lambda: CallableBackground(_box_mean, 3.0, 3.0, n_pixels=841),
    "mesh": lambda: MeshBackground(box_size=16),
    "templates": _templates,
}
PHOTOMETERS = {
    "aperture": lambda: AperturePhotometer(4.0, background=_bg()),
    "model_aperture": lambda: ModelAperturePhotometer(PSF, background=_bg()),
    "optimal": lambda: OptimalPhotometer(PSF, background=_bg(), size=15),
    "profile_fit": lambda: ProfileFitPhotometer(PSF, background=_bg(), size=15),
}
HDR = {"FILTER": "r", "EPOCH": "a"}  # the band/epoch the templates are keyed by
CONTAINERS = {
    "masked_array": lambda: (np.ma.masked_array(IMG.copy(), mask=MASK.copy()), None),
    "ccddata": lambda: (CCDData(IMG.copy(), mask=MASK.copy(), unit="adu", meta=HDR), u.adu),
    "nddata": lambda: (NDData(IMG.copy(), mask=MASK.copy(), meta=HDR), None),
    "nddata_unit": lambda: (NDData(IMG.copy(), mask=MASK.copy(), unit="electron", meta=HDR),
                            u.electron),
    "image": lambda: (Image(IMG.copy(), MASK.copy(), meta=ImageMeta(band="r", epoch="a")), None),
}
#: containers that cannot carry the band/epoch the templates need
NO_META = {"masked_array", "quantity"}


def _bare(name):
    """The bare array -- as an Image with band/epoch for the templates, which need them."""
    return Image(IMG, None, meta=ImageMeta(band="r", epoch="a")) if name == "templates" else IMG


def _call(obj, image, **kw):
    if hasattr(obj, "estimate"):
        return obj.estimate(image, X, Y, **kw)
    return obj.measure(image, X, Y, **kw)


def _fields(res):
    return type(res).UNIT_FIELDS


def _check_same(res, ref, unit):
    for name in _fields(res):
        got = getattr(res, name)
        if unit is None:
            assert not isinstance(got, u.Quantity), name
            assert_array_equal(got, getattr(ref, name), err_msg=name)
        else:
            assert isinstance(got, u.Quantity) and got.unit == unit, name
            assert_array_equal(got.value, getattr(ref, name), err_msg=name)
    assert_array_equal(res.flags, ref.flags)


def _reference(name, factory):
    ref = _call(factory(), _bare(name), mask=MASK)
    dropped = _call(factory(), _bare(name))
    # the scene is such that ignoring the mask changes the answer (else the test proves nothing)
    differs = [k for k in _fields(ref)
               if not np.array_equal(getattr(dropped, k), getattr(ref, k), equal_nan=True)]
    assert differs or not np.array_equal(dropped.flags, ref.flags), name
    return ref


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("name", sorted(ESTIMATORS) + sorted(PHOTOMETERS))
def test_every_container_gives_the_bare_array_numbers(name, container):
    if name == "templates" and container in NO_META:
        pytest.skip("a masked array carries no band/epoch for the templates")
    factory = {**ESTIMATORS, **PHOTOMETERS}[name]
    ref = _reference(name, factory)
    image, unit = CONTAINERS[container]()
    before = np.array(image.data if hasattr(image, "data") else image, copy=True)
    res = _call(factory(), image)
    _check_same(res, ref, unit)
    # the container's mask is OR-ed with mask= (an extra all-False mask changes nothing)
    res2 = _call(factory(), image, mask=np.zeros(SHAPE, bool))
    _check_same(res2, ref, unit)
    assert_array_equal(np.asarray(image.data if hasattr(image, "data") else image), before)


@pytest.mark.parametrize("name", sorted(ESTIMATORS) + sorted(PHOTOMETERS))
def test_quantity_with_mask_keyword_carries_the_unit(name):
    factory = {**ESTIMATORS, **PHOTOMETERS}[name]
    ref = _reference(name, factory)
    if name == "templates":
        image = CCDData(IMG, unit="electron", meta=HDR)
    else:
        image = IMG * u.electron
    res = _call(factory(), image, mask=MASK)
    _check_same(res, ref, u.electron)


def test_the_issue_table_annulus_mean():
    """The issue's first row: a masked array's mask was dropped (1401 instead of 401)."""
    img = np.full((60, 60), 401.0)
    m = np.zeros(img.shape, bool)
    ring = (np.hypot(*np.meshgrid(np.arange(60) - 30, np.arange(60) - 30)) - 15) ** 2 < 4
    ring &= np.arange(60)[None, :] > 30
    img[ring] = 401.0 + 2000.0
    m[ring] = True
    est = AnnulusBackground(10, 20, statistic="mean")
    x, y = np.array([30.0]), np.array([30.0])
    assert est.estimate(img, x, y).bkg[0] > 500  # unmasked: the ring counts
    assert est.estimate(img, x, y, mask=m).bkg[0] == pytest.approx(401.0)
    assert est.estimate(np.ma.masked_array(img, mask=m), x, y).bkg[0] == pytest.approx(401.0)
    assert est.estimate(CCDData(img, mask=m, unit="adu"), x, y).bkg[0] == 401.0 * u.adu
    assert est.estimate(NDData(img, mask=m), x, y).bkg[0] == pytest.approx(401.0)
    q = est.estimate(img * u.electron, x, y, mask=m)
    assert q.bkg.unit == u.electron and q.bkg_err.unit == u.electron
    assert q.as_table()["bkg"].unit == u.electron


def test_maps_carry_the_unit():
    mesh = MeshBackground(box_size=16)
    bmap, rms = mesh.background_map(CCDData(IMG, mask=MASK, unit="adu"))
    ref_b, ref_r = mesh.background_map(IMG, MASK)
    assert bmap.unit == u.adu and rms.unit == u.adu
    assert_array_equal(bmap.value, ref_b)
    assert_array_equal(rms.value, ref_r)
    corrected = _templates().templates.correct(CCDData(IMG, unit="adu", meta=HDR))
    assert isinstance(corrected, Image) and corrected.unit == u.adu


def test_as_image_reads_every_part_of_an_nddata():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [-1e-4, 1e-4]
    ccd = CCDData(IMG, mask=MASK, unit="adu", wcs=w,
                  uncertainty=StdDevUncertainty(np.full(SHAPE, 2.0)))
    img = as_image(ccd, mask=np.eye(*SHAPE, dtype=bool))
    assert img.unit == u.adu and img.wcs is not None
    assert_array_equal(img.mask, MASK | np.eye(*SHAPE, dtype=bool))
    assert_allclose(img.variance, 4.0)
    # band/epoch/gain from the meta keywords; a bad number names the keyword
    nd = as_image(NDData(IMG, meta={"FILTER": "r", "EPOCH": "a", "GAIN": "2.5"}))
    assert (nd.meta.band, nd.meta.epoch, nd.meta.gain) == ("r", "a", 2.5)
    with pytest.raises(InputError, match="GAIN must be a number"):
        as_image(NDData(IMG, meta={"GAIN": "high"}))
    # NaN pixels are masked whatever the container says
    d = IMG.copy()
    d[0, 0] = np.nan
    assert as_image(NDData(d)).mask[0, 0]
    # wrong-shaped masks and uncertainties name the problem
    with pytest.raises(InputError, match="mask shape"):
        as_image(np.ma.masked_array(IMG, mask=MASK), mask=np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="uncertainty shape"):
        as_image(NDData(IMG, uncertainty=StdDevUncertainty(np.ones((3, 3)))))


def test_skycoord_positions_use_the_container_wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [-1e-4, 1e-4]
    ra, dec = w.pixel_to_world_values(X, Y)
    coords = SkyCoord(ra * u.deg, dec * u.deg)
    ccd = CCDData(IMG, mask=MASK, unit="adu", wcs=w)
    est = _bg()
    xs, ys = w.world_to_pixel(coords)
    assert_allclose(xs, X, atol=1e-6)
    assert_allclose(ys, Y, atol=1e-6)
    res = est.estimate(ccd, coords)
    assert_array_equal(res.bkg.value, est.estimate(IMG, xs, ys, mask=MASK).bkg)
    phot = AperturePhotometer(4.0, background=_bg())
    assert_array_equal(phot.measure(ccd, coords).flux.value,
                       phot.measure(IMG, xs, ys, mask=MASK).flux)
    with pytest.raises(InputError, match="need a WCS"):
        est.estimate(IMG, coords)


class _ZeroBackground:
    """Background 0 with no error: the flux error is then the aperture's pixel noise only."""

    name = "zero"

    def estimate(self, image, x, y, **kw):
        from skysub.background.base import BackgroundResult

        n = len(x)
        return BackgroundResult(np.zeros(n), np.zeros(n), np.full(n, np.nan),
                                np.zeros(n, int), np.zeros(n, np.int32))


def test_uncertainty_is_the_pixel_variance_of_the_flux_errors():
    """CCDData uncertainty -> flux_err = sqrt(sum w^2 sigma^2): with whole-pixel weights (the
    "center" method) exactly photutils' ``error=`` (which sums w sigma^2 for partial pixels)."""
    from photutils.aperture import CircularAperture, aperture_photometry

    rng = np.random.default_rng(8)
    sigma = rng.uniform(1.0, 4.0, SHAPE)
    ccd = CCDData(IMG, unit="adu", uncertainty=StdDevUncertainty(sigma))
    # the propagation alone: no empty-aperture calibration (the default, "auto", rescales the
    # errors to the spread of empty apertures wherever the frame has enough of them)
    phot = AperturePhotometer(4.0, background=_ZeroBackground(), method="center",
                              error_calibration="none")
    res = phot.measure(ccd, X, Y)
    ref = aperture_photometry(IMG, CircularAperture(np.c_[X, Y], r=4.0), error=sigma,
                              method="center")
    assert_allclose(res.flux.value, np.asarray(ref["aperture_sum"]), rtol=1e-10)
    assert_allclose(res.flux_err.value, np.asarray(ref["aperture_sum_err"]), rtol=1e-10)
    assert res.flux_err.unit == u.adu
    # a variance uncertainty gives the same; without one the error model is used instead
    from astropy.nddata import VarianceUncertainty

    res_v = phot.measure(NDData(IMG, uncertainty=VarianceUncertainty(sigma**2)), X, Y)
    assert_allclose(res_v.flux_err, res.flux_err.value, rtol=1e-12)
    plain = AperturePhotometer(4.0, background=_bg(), method="center",
                               error_calibration="none").measure(IMG, X, Y)
    assert not np.allclose(plain.flux_err, res.flux_err.value)
    # by default the uncertainty map's errors are calibrated on the frame's empty apertures
    # too: here the zero background leaves the sky's structure in every empty aperture
    cal = AperturePhotometer(4.0, background=_ZeroBackground(), method="center").measure(
        ccd, X, Y)
    assert cal.meta["error_calibration"]["status"] == "calibrated"
    assert np.all(cal.flux_err.value > 3 * res.flux_err.value)
    assert_allclose(cal.flux.value, res.flux.value, rtol=1e-12)
    # the model-scaled aperture uses it too: its error scales like sqrt(sum w^2 sigma^2)
    m1 = ModelAperturePhotometer(PSF, background=_ZeroBackground()).measure(
        NDData(IMG, uncertainty=StdDevUncertainty(np.full(SHAPE, 2.0))), X, Y)
    m2 = ModelAperturePhotometer(PSF, background=_ZeroBackground()).measure(
        NDData(IMG, uncertainty=StdDevUncertainty(np.full(SHAPE, 4.0))), X, Y)
    assert_allclose(m2.flux_err, 2 * m1.flux_err, rtol=1e-12)


@pytest.mark.parametrize("method", ["bkgnet", "inpaint", "lumos"])
def test_learned_methods_honour_container_masks(method):
    """The learned estimators/photometer take containers through the same adapter: the mask
    (and the band/epoch in an NDData's meta) are honoured; units: see the next test."""
    from skysub.background.bkgnet import BKGnetBackground
    from skysub.photometry.lumos import LumosPhotometer
    from skysub.removal.estimator import InpaintBackground

    rng = np.random.default_rng(0)
    img = rng.normal(100, 3, (128, 128))
    m = np.zeros(img.shape, bool)
    m[60:64, 70:80] = True
    img[m] = 1e5
    x, y = np.array([64.0, 40.0]), np.array([64.0, 90.0])
    meta = ImageMeta(band="NB455", epoch="before")
    hdr = {"FILTER": "NB455", "EPOCH": "before"}
    obj = {"bkgnet": lambda: BKGnetBackground(device="cpu"),
           "inpaint": lambda: InpaintBackground(radius=6.0),
           "lumos": lambda: LumosPhotometer()}[method]()
    call = obj.estimate if hasattr(obj, "estimate") else obj.measure
    key = "bkg" if hasattr(obj, "estimate") else "flux"
    ref = np.asarray(getattr(call(Image(img, None, meta=meta), x, y, mask=m), key))
    dropped = np.asarray(getattr(call(Image(img, None, meta=meta), x, y), key))
    assert not np.allclose(ref, dropped)
    for container in (NDData(img, mask=m, meta=hdr), CCDData(img, mask=m, unit="adu", meta=hdr)):
        got = getattr(call(container, x, y), key)
        assert_array_equal(np.asarray(getattr(got, "value", got)), ref)


def test_learned_methods_return_the_inputs_unit():
    """BKGnet and Lumos give Quantity results for Quantity input, the same numbers as bare."""
    import astropy.units as u

    from skysub.background.bkgnet import BKGnetBackground
    from skysub.image import Image, ImageMeta

    rng = np.random.default_rng(3)
    data = 400.0 + rng.normal(0, 20, (200, 200))
    meta = ImageMeta(band="NB455", epoch="before", exptime=90.0, gain=1.0, rdnoise=5.0)
    x, y = np.array([100.0, 60.0]), np.array([100.0, 140.0])
    est = BKGnetBackground()
    bare = est.estimate(Image(data=data, mask=None, meta=meta), x, y)
    withu = est.estimate(Image(data=data, mask=None, meta=meta, unit=u.electron), x, y)
    assert withu.bkg.unit == u.electron and withu.bkg_err.unit == u.electron
    np.testing.assert_allclose(withu.bkg.value, bare.bkg)
