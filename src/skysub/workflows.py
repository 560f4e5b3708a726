"""Library functions behind the CLI: images + catalogue in, tables and maps out.

Every ``skysub`` command is a thin layer over one of these, so a script can do exactly what
the command does::

    from skysub.config import load_config
    from skysub.workflows import make_background, measure_background

    cfg = load_config("paus")
    est = make_background("annulus", config=cfg)
    table = measure_background(["exp1.fits", "exp2.fits"], "catalog.csv", est)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from .config import SurveyConfig, load_config
from .errors import InputError
from .image import Image
from .io import catalog_for_image, iter_images, read_catalog, write_fits_product
from .io import expand_paths as expand_paths  # its old home: still importable from here
from .progress import progress

log = logging.getLogger("skysub")

from .names import BACKGROUND_METHODS, PHOTOMETERS  # noqa: E402  (re-exported here)


def _catalog(catalog: str | Path | Table) -> Table:
    """Any catalogue the reader understands (file, Table, photutils or sep table), as a copy."""
    return read_catalog(catalog)


def make_background(method: str, *, config: SurveyConfig | None = None,
                    templates: Any = None, r_in: float | None = None,
                    r_out: float | None = None, statistic: str | None = None,
                    model: Any = None, device: str = "auto", batch_size: int = 512,
                    unknown_key: str = "error"):
    """A background estimator by name.

    Parameters
    ----------
    method : {"annulus", "templates", "mesh", "bkgnet", "inpaint"}
        ``templates`` is the annulus run on the scattered-light-corrected image (BKGnet §2.4);
        ``bkgnet`` the learned estimator (:class:`skysub.background.bkgnet.BKGnetBackground`);
        ``inpaint`` the compact-source removal U-Net (model from ``[removal] model``).
    config : SurveyConfig, optional
        Supplies the ``[annulus]`` and ``[mesh]`` settings (default: the generic preset).
    templates : ScatteredLightTemplates or path, required for ``templates``
    r_in, r_out, statistic : optional overrides of the ``[annulus]`` settings
    model : model file or shipped model name for learned methods (bkgnet default:
        ``bkgnet-paus``)
    device, batch_size : inference settings of learned methods
    unknown_key : bkgnet: "error" or "warn" for a band x epoch the model never saw
    """
    from .background.annulus import AnnulusBackground

    config = config or load_config()
    if method not in BACKGROUND_METHODS:
        raise InputError(f"unknown background method {method!r}; expected one of "
                         f"{', '.join(BACKGROUND_METHODS)}")
    if method == "bkgnet":
        from .background.bkgnet import DEFAULT_MODEL, BKGnetBackground

        return BKGnetBackground(model or DEFAULT_MODEL, device=device, batch_size=batch_size,
                                unknown_key=unknown_key)
    if method == "inpaint":  # the compact-source removal U-Net (skysub.removal)
        from .removal.estimator import InpaintBackground

        section = dict(config.removal)
        return InpaintBackground(section.get("model", "inpaint-default"),
                                 radius=config.photometry.get("aperture_radius"),
                                 psf_fwhm=section.get("psf_fwhm"))
    if method == "mesh":
        from .background.mesh import MeshBackground

        try:
            return MeshBackground(**config.mesh)
        except TypeError as exc:
            raise InputError(f"[mesh] configuration: {exc}") from None
    section = dict(config.annulus)
    for key, val in (("r_in", r_in), ("r_out", r_out), ("statistic", statistic)):
        if val is not None:
            section[key] = val
    annulus = AnnulusBackground.from_config(section)
    if method == "annulus":
        return annulus
    from .background.templates import ScatteredLightTemplates, TemplateCorrected

    if templates is None:
        raise InputError("--method templates needs --templates SLT.fits (build one with "
                         "`skysub templates build`)")
    if not isinstance(templates, ScatteredLightTemplates):
        templates = ScatteredLightTemplates.load(templates)
    return TemplateCorrected(annulus, templates, name="templates")


def _neighbours(cat: Table) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(cat["x"], float), np.asarray(cat["y"], float)


def _mag(cat: Table) -> np.ndarray | None:
    return np.asarray(cat["mag"], float) if "mag" in cat.colnames else None


def _ids(cat: Table) -> np.ndarray:
    return np.asarray(cat["id"])


def measure_background(images: Sequence[str | Path | Image], catalog: str | Path | Table,
                       estimator: Any, *, quiet: bool = False, map_path: str | Path | None = None,
                       overwrite: bool = False, **read_kwargs: Any) -> Table:
    """Background under every catalogued source of every image.

    Returns a Table with columns image (file name), id, x, y, bkg, bkg_err, flags (per pixel,
    image units; bkg_err = 1-sigma error of bkg itself), plus any extra columns the estimator
    reports.  With ``map_path`` the estimator's background map is written too (one file per
    image: ``<map stem>_<image stem>.fits`` when there are several images).
    """
    cat_all = _catalog(catalog)
    tables = []
    img_iter = _image_iter(images, quiet=quiet, **read_kwargs)
    inputs = [p for p in images if not isinstance(p, Image)]
    for image in img_iter:
        cat = catalog_for_image(cat_all, image)
        res = estimator.estimate(image, cat["x"], cat["y"], mag=_mag(cat),
                                 neighbours=_neighbours(cat))
        t = Table()
        t["image"] = np.full(len(cat), image.name, dtype=object).astype(str)
        t["id"] = _ids(cat)
        t["x"] = np.asarray(cat["x"], float)
        t["y"] = np.asarray(cat["y"], float)
        t["bkg"] = res.bkg
        t["bkg_err"] = res.bkg_err
        t["flags"] = res.flags
        for k, v in res.extra.items():
            t[k] = v
        tables.append(t)
        if map_path is not None:
            write_background_map(estimator, image, _map_name(map_path, image, len(inputs)),
                                 overwrite=overwrite, inputs=inputs)
    return _stack(tables)


def _image_iter(images, *, quiet: bool, **read_kwargs) -> Iterator[Image]:
    if all(isinstance(i, Image) for i in images):
        yield from progress(images, desc="images", quiet=quiet, unit="image")
    else:
        yield from iter_images([str(i) for i in images], quiet=quiet, **read_kwargs)


def _map_name(map_path: str | Path, image: Image, n_images: int) -> Path:
    map_path = Path(map_path)
    if n_images <= 1:
        return map_path
    stem = image.path.stem if image.path is not None else "image"
    return map_path.with_name(f"{map_path.stem}_{stem}{map_path.suffix or '.fits'}")


def write_background_map(estimator: Any, image: Image, path: str | Path, *,
                         overwrite: bool = False, inputs: Sequence = ()) -> Path:
    """Write the estimator's background map for ``image`` (FITS, header and WCS kept).

    mesh: primary = background map, extension RMS = rms map.  templates: primary = the
    scattered-light component (SLT - 1) * mu_BKG, extension CORRECTED = the corrected image.
    The annulus has no map: an InputError says which methods do.
    """
    if not hasattr(estimator, "background_map"):
        raise InputError(f"--map: the {getattr(estimator, 'name', 'chosen')} method gives no "
                         "background map; use --method mesh or --method templates")
    main, second = estimator.background_map(image)
    names = getattr(estimator, "map_names", ("BACKGROUND", "EXTRA"))
    ext = {names[1]: np.asarray(second, np.float32), "MASK": image.mask.astype(np.uint8)}
    return write_fits_product(path, main, header=image.header, wcs=image.wcs, extensions=ext,
                              overwrite=overwrite, inputs=[image.path, *inputs])


def _stack(tables: list[Table]) -> Table:
    tables = [t for t in tables if len(t)]
    if not tables:
        return Table(names=("image", "id", "x", "y", "bkg", "bkg_err", "flags"),
                     dtype=(str, np.int64, float, float, float, float, np.int32))
    return vstack(tables, metadata_conflicts="silent")


def make_photometer(name: str, *, background: Any, config: SurveyConfig | None = None,
                    radius: float | None = None, psf_fwhm: float | None = None,
                    psf: str | Path | None = None, model: str | Path | None = None,
                    device: str = "auto", batch_size: int = 512, use_mag: bool = True,
                    mag_offset: float = 0.0, zeropoint: float | None = None,
                    error_calibration: str = "auto", photometric_system: str = "AB"):
    """A photometer by name: ``aperture`` (circular, radius from [photometry] aperture_radius),
    ``optimal`` (Lumos eq. 6 weights from a PSF-convolved catalogue model) or ``lumos``
    (flux PDFs from a Lumos ``model``, default ``lumos-paus``; its own background; ``use_mag``
    False gives its data-only PDFs; ``zeropoint``: the exposures' zero point for models trained
    on the user's exposures, default a header keyword, a fit or PHOTFLAM in
    ``photometric_system``; ``mag_offset`` is added to the
    catalogue magnitudes of models trained on the built-in simulator).  ``error_calibration``:
    ``"auto"`` / ``"empty"`` (empty-aperture calibrated flux errors,
    :mod:`skysub.photometry.emptyaper`) or ``"none"``, for aperture and optimal."""
    from .photometry import photometer_from_name

    config = config or load_config()
    if name not in PHOTOMETERS:
        raise InputError(f"unknown photometer {name!r}; expected one of {', '.join(PHOTOMETERS)}")
    if name == "aperture":
        r = radius if radius is not None else config.photometry.get("aperture_radius", 8.0)
        return photometer_from_name("aperture", radius=float(r), background=background,
                                    error_calibration=error_calibration)
    from .simulate.psf import gaussian_psf, load_psf

    if name == "lumos":
        from .photometry.lumos import DEFAULT_MODEL, LumosPhotometer

        return LumosPhotometer(model or DEFAULT_MODEL, psf=None if psf is None else load_psf(psf),
                               device=device, batch_size=batch_size, use_mag=use_mag,
                               estimator=(config.lumos or {}).get("estimator"),
                               mag_offset=mag_offset, zeropoint=zeropoint,
                               photometric_system=photometric_system)

    if psf is not None:
        kernel = load_psf(psf)
    else:
        fwhm = psf_fwhm if psf_fwhm is not None else config.photometry.get(
            "psf_fwhm", config.simulate.get("psf_fwhm", 3.5))
        kernel = gaussian_psf(int(2 * np.ceil(3 * fwhm) + 1), float(fwhm))
    return photometer_from_name("optimal", psf=kernel, background=background,
                                error_calibration=error_calibration)


def measure_photometry(images: Sequence[str | Path | Image], catalog: str | Path | Table,
                       photometer: Any, *, quiet: bool = False, **read_kwargs: Any) -> Table:
    """Flux of every catalogued source of every image.

    Returns a Table with columns image, id, x, y, flux, flux_err, bkg, bkg_err, flags (and,
    where the photometer gives them, ``err_alpha``, ``err_sigma_s``, ``err_local`` -- the
    empty-aperture error calibration, also in ``meta["error_calibration"]`` per image -- and
    ``flux_err_shape``).  A SExtractor catalogue without ``r50`` gives a model photometer
    (one with a ``psf``) its shapes through :func:`skysub.catalogs.sextractor_shapes`.
    """
    from .catalogs import has_sextractor_shapes, sextractor_shapes

    cat_all = _catalog(catalog)
    psf = getattr(photometer, "psf", None)
    if psf is not None and has_sextractor_shapes(cat_all):  # model photometry: SExtractor shapes
        from .photometry.aperture import psf_sigma

        cat_all = sextractor_shapes(cat_all, psf_sigma(np.asarray(psf, float)))
    tables = []
    calibrations = {}
    for image in _image_iter(images, quiet=quiet, **read_kwargs):
        cat = catalog_for_image(cat_all, image)
        res = photometer.measure(image, cat["x"], cat["y"], mag=_mag(cat),
                                 neighbours=_neighbours(cat), catalog=cat)
        if "error_calibration" in getattr(res, "meta", {}):
            calibrations[image.name] = res.meta["error_calibration"]
        t = Table()
        t["image"] = np.full(len(cat), image.name, dtype=object).astype(str)
        t["id"] = _ids(cat)
        t["x"] = np.asarray(cat["x"], float)
        t["y"] = np.asarray(cat["y"], float)
        for col in ("flux", "flux_err", "bkg", "bkg_err", "flags"):
            t[col] = getattr(res, col)
        for col in ("err_alpha", "err_sigma_s", "err_local",  # error calibration
                    "flux_err_shape"):  # shapes
            if col in getattr(res, "extra", {}):
                t[col] = res.extra[col]
        extra_cols = getattr(photometer, "extra_columns", ())  # e.g. Lumos mixtures
        if extra_cols:
            t["band"] = np.full(len(cat), str(image.meta.band))
            for col in extra_cols:
                t[col] = res.extra[col]
        tables.append(t)
    out = _stack(tables)
    for col in ("flux", "flux_err"):
        if col not in out.colnames:
            out[col] = np.zeros(0)
    if calibrations:
        out.meta["error_calibration"] = calibrations
    zps = getattr(photometer, "zeropoints", None)  # Lumos: each exposure's zero point
    if zps:
        out.meta["zero_points"] = {k: z.as_dict() for k, z in zps.items()}
    return out


def build_templates(images: Sequence[str | Path | Image], catalog: str | Path | Table | None,
                    *, config: SurveyConfig | None = None, quiet: bool = False,
                    **read_kwargs: Any):
    """Scattered-light templates per band x epoch from a set of exposures (BKGnet eq. 1).

    Catalogued sources are masked (circle of ``[templates] source_radius``) on top of the
    ratio-threshold masking.  Images are read into memory together per call.
    """
    from .background.templates import ScatteredLightTemplates

    config = config or load_config()
    read_kwargs.setdefault("required", ("band",))
    imgs = list(_image_iter(images, quiet=quiet, **read_kwargs))
    cats = None
    if catalog is not None:
        cat_all = _catalog(catalog)
        cats = []
        for im in imgs:
            c = catalog_for_image(cat_all, im)
            cats.append((np.asarray(c["x"], float), np.asarray(c["y"], float)))
    try:
        return ScatteredLightTemplates.build(imgs, catalogs=cats, progress=not quiet,
                                             **config.templates)
    except TypeError as exc:
        raise InputError(f"[templates] configuration: {exc}") from None
