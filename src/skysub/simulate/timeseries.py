"""Multi-camera time series (OPTICAM-like): frames of a few stars, one of them variable.

Each camera (``g``, ``r``, ``i`` by default) takes ``n_images`` frames at a fixed cadence.  A frame
is, in counts (gain 1)::

    background (flat, or flat + linear gradient; mean = ``background``)
    + stars: elliptical Gaussian PSF (sigmas along its own axes, major axis ``psf_angle`` DEGREES
      counter-clockwise from +x), integrated over each pixel by oversampling
    -> Poisson noise (numpy's Poisson draw of the whole model, not a Gaussian approximation)

The telescope jitters: frame ``k`` maps field (= reference) coordinates to its own pixels by a
rotation of ``rotation_k`` about the image centre plus a shift ``shift_k``; frame 0 of every
camera is the identity, so the truth positions are the reference-frame positions.

One star (index 0 in the truth) is variable:
``F(t) = F0 [1 + sqrt(2) rms sin(2 pi f (t - t0) - lag_camera)]`` with ``t`` the mid-exposure
time in seconds (a sinusoid of RMS ``rms`` relative to its mean).

Everything is deterministic from ``seed``; the truth (star positions and mean fluxes per camera,
the variable's parameters, every frame's transform and flux) is returned and written as
``truth.json`` beside the frames.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time

from ..errors import ConfigError, OutputExistsError
from ..progress import progress
from .ccd import _add_stamps

#: OAN San Pedro Martir (where OPTICAM observes): latitude, longitude [deg], height [m]
SPM_SITE = (31.0442, -115.4638, 2800.0)


@dataclass
class TimeSeriesSimConfig:
    """Settings of :func:`simulate_observations` (all lengths in binned pixels).

    Attributes
    ----------
    cameras : camera/filter names (one filter per camera).
    binning : on-chip binning; the frame side is ``detector_size // binning``.
    detector_size : unbinned detector side in pixels (OPTICAM: 2048).
    n_stars : stars per field (including the variable).
    star_flux : (min, max) mean total counts of the constant stars (log-uniform).
    variable_flux : mean total counts of the variable star.
    background : mean background per pixel [counts].
    gradient : (gx, gy) change of the background across the full width / height [counts].
    psf_sigma : (semimajor, semiminor) PSF sigmas [px].
    psf_angle : PSF orientation, DEGREES counter-clockwise from +x.
    rms, frequency : relative RMS of the variable's sinusoid and its frequency [Hz].
    phase_lags : phase lag per camera [radians]; None: camera ``j`` lags by ``j pi / 2``
        (the tutorial's g 0, r pi/2, i pi); cameras missing from a dict get 0.
    exptime, cadence : exposure time and time between frame starts [s].
    start : start of the first frame (ISO, UTC).
    jitter : RMS frame-to-frame pointing shift [px] (0 = none).
    max_rotation : frames are rotated by uniform(-max_rotation, max_rotation) DEGREES.
    min_separation : stars are at least this far apart [px].
    ra, dec : target position [deg] (written as RA/DEC so times can be barycentred).
    site : (latitude [deg], longitude [deg], height [m]) written as OBSGEO-B/L/H.
    """

    cameras: tuple[str, ...] = ("g", "r", "i")
    binning: int = 4
    detector_size: int = 2048
    n_stars: int = 6
    star_flux: tuple[float, float] = (2e4, 1e5)
    variable_flux: float = 5e4
    background: float = 100.0
    gradient: tuple[float, float] = (0.0, 0.0)
    psf_sigma: tuple[float, float] = (1.4, 1.4)
    psf_angle: float = 0.0
    rms: float = 0.02
    frequency: float = 0.135
    phase_lags: dict[str, float] | None = None
    exptime: float = 1.0
    cadence: float = 1.0
    start: str = "2024-01-01T00:00:00"
    jitter: float = 1.5
    max_rotation: float = 0.0
    min_separation: float = 30.0
    ra: float = 123.456
    dec: float = 21.0
    site: tuple[float, float, float] = SPM_SITE

    def __post_init__(self) -> None:
        self.cameras = tuple(str(c).strip() for c in self.cameras)
        if not self.cameras or any(not c or "/" in c for c in self.cameras):
            raise ConfigError(f"cameras must be non-empty names without '/', got {self.cameras}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"camera names must be unique, got {self.cameras}")
        if int(self.binning) != self.binning or self.binning < 1:
            raise ConfigError(f"binning must be a positive integer, got {self.binning!r}")
        if self.size < 32:
            raise ConfigError(f"frames of {self.size} px are too small: detector_size "
                              f"{self.detector_size} // binning {self.binning} must be >= 32")
        if int(self.n_stars) != self.n_stars or self.n_stars < 1:
            raise ConfigError(f"n_stars must be a positive integer, got {self.n_stars!r}")
        a, b = (float(s) for s in self.psf_sigma)
        if not (a > 0 and b > 0):
            raise ConfigError(f"psf_sigma must be two positive sigmas [px], got {self.psf_sigma}")
        if b > a:
            raise ConfigError(f"psf_sigma is (semimajor, semiminor): the first must be the "
                              f"larger, got {self.psf_sigma}")
        for name in ("background", "variable_flux", "exptime", "cadence", "frequency"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be positive, got {name}={v!r}")
        if not (0 <= self.rms < 1 / np.sqrt(2)):
            raise ConfigError(f"rms must be in [0, 0.707) (the flux must stay positive), "
                              f"got rms={self.rms!r}")
        lo, hi = self.star_flux
        if not (0 < lo <= hi):
            raise ConfigError(f"star_flux must be (min, max) with 0 < min <= max, got "
                              f"{self.star_flux}")
        if abs(self.gradient[0]) / 2 + abs(self.gradient[1]) / 2 >= self.background:
            raise ConfigError(f"gradient {self.gradient} would make the background negative "
                              f"(mean {self.background})")
        if self.phase_lags is None:
            self.phase_lags = {c: j * np.pi / 2 for j, c in enumerate(self.cameras)}
        self.phase_lags = {str(k): float(v) for k, v in self.phase_lags.items()}
        unknown = sorted(set(self.phase_lags) - set(self.cameras))
        if unknown:
            raise ConfigError(f"phase_lags names unknown camera(s) {unknown}; cameras are "
                              f"{list(self.cameras)}")

    @property
    def size(self) -> int:
        """Frame side in binned pixels."""
        return int(self.detector_size) // int(self.binning)

    def lag(self, camera: str) -> float:
        return float(self.phase_lags.get(camera, 0.0))


def elliptical_gaussian_stamps(size: int, flux, dx, dy, sigma_major: float,
                               sigma_minor: float, theta: float, *,
                               oversample: int = 5) -> np.ndarray:
    """Pixel-integrated elliptical Gaussians on ``size`` x ``size`` stamps, batched.

    Parameters
    ----------
    size : int
        Odd stamp side; the source is at ``size // 2 + (dx, dy)`` (the :mod:`skysub.stamps`
        layout).
    flux : array (m,)
        Total flux of each source over the infinite plane.
    dx, dy : arrays (m,)
        Sub-pixel offsets.
    sigma_major, sigma_minor : float
        Sigmas along the Gaussian's own axes [px].
    theta : float
        Orientation of the major axis in DEGREES counter-clockwise from +x (same
        parameterisation as :func:`skysub.simulate.psf.elliptical_gaussian_psf`).
    oversample : int
        Sub-pixels per side used to integrate over each pixel.

    Returns
    -------
    ndarray (m, size, size)
    """
    dx, dy, flux = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, float))
                                         for a in (dx, dy, flux)))
    g = -0.5 + (np.arange(size * oversample) + 0.5) / oversample - size // 2
    xx = g[None, None, :] - dx[:, None, None]
    yy = g[None, :, None] - dy[:, None, None]
    t = np.deg2rad(theta)  # public API in degrees; numpy wants radians
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    fine = np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / sigma_minor) ** 2))
    img = fine.reshape(-1, size, oversample, size, oversample).sum(axis=(2, 4))
    norm = 2 * np.pi * sigma_major * sigma_minor * oversample**2  # integral, in sub-pixels
    return img * (flux / norm)[:, None, None]


def frame_transform(rotation_deg: float, shift: tuple[float, float], size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) mapping reference (x, y) to frame (x, y): a rotation by
    ``rotation_deg`` (CCW) about the image centre followed by ``shift``."""
    t = np.deg2rad(rotation_deg)
    m = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    c = np.array([(size - 1) / 2.0] * 2)
    return m, c - m @ c + np.asarray(shift, float)


def _place_stars(cfg: TimeSeriesSimConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) star positions at least ``min_separation`` apart, away from the edges."""
    margin = max(12.0 * cfg.psf_sigma[0], 0.12 * cfg.size)
    out: list[np.ndarray] = []
    for _ in range(200 * cfg.n_stars):
        p = rng.uniform(margin, cfg.size - 1 - margin, 2)
        if all(np.hypot(*(p - q)) >= cfg.min_separation for q in out):
            out.append(p)
            if len(out) == cfg.n_stars:
                return np.array(out)
    raise ConfigError(f"cannot place {cfg.n_stars} stars {cfg.min_separation} px apart on a "
                      f"{cfg.size} px frame; lower n_stars or min_separation")


def simulate_truth(cfg: TimeSeriesSimConfig, n_images: int, seed: int = 0) -> dict[str, Any]:
    """The truth of a simulation (positions, fluxes, times, transforms), without pixels."""
    if int(n_images) != n_images or n_images < 1:
        raise ConfigError(f"n_images must be a positive integer, got {n_images!r}")
    rng = np.random.default_rng([int(seed), 0])
    xy = _place_stars(cfg, rng)
    lo, hi = cfg.star_flux
    base = np.exp(rng.uniform(np.log(lo), np.log(hi), cfg.n_stars))
    base[0] = cfg.variable_flux
    colours = {cam: np.exp(rng.normal(0, 0.15, cfg.n_stars)) for cam in cfg.cameras}
    for cam in cfg.cameras:
        colours[cam][0] = 1.0  # the variable has the same mean flux in every band
    t0 = Time(cfg.start, scale="utc")
    starts = np.arange(int(n_images)) * cfg.cadence  # s since t0
    mid = starts + cfg.exptime / 2
    shifts = rng.normal(0.0, cfg.jitter, (int(n_images), 2)) if cfg.jitter > 0 else \
        np.zeros((int(n_images), 2))
    rots = rng.uniform(-cfg.max_rotation, cfg.max_rotation, int(n_images)) \
        if cfg.max_rotation > 0 else np.zeros(int(n_images))
    shifts[0] = 0.0
    rots[0] = 0.0
    cams: dict[str, Any] = {}
    for cam in cfg.cameras:
        mean_flux = base * colours[cam]
        var = cfg.variable_flux * (1 + np.sqrt(2) * cfg.rms
                                   * np.sin(2 * np.pi * cfg.frequency * mid - cfg.lag(cam)))
        cams[cam] = {"mean_flux": mean_flux.tolist(), "variable_flux": var.tolist()}
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "size": cfg.size, "seed": int(seed), "n_images": int(n_images),
        "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "variable_index": 0,
        "mjd_start": (t0.mjd + starts / 86400.0).tolist(),
        "time_mid_s": mid.tolist(),
        "shift": shifts.tolist(), "rotation_deg": rots.tolist(), "cameras": cams,
    }


def render_frame(cfg: TimeSeriesSimConfig, truth: dict[str, Any], camera: str, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free model and Poisson-noised frame ``k`` of ``camera`` (counts, float64)."""
    n = cfg.size
    yy, xx = np.mgrid[0:n, 0:n]
    gx, gy = cfg.gradient
    model = (cfg.background + gx * (xx / (n - 1) - 0.5) + gy * (yy / (n - 1) - 0.5)).astype(float)
    m, off = frame_transform(truth["rotation_deg"][k], truth["shift"][k], n)
    ref = np.c_[truth["x"], truth["y"]]
    pos = ref @ m.T + off
    flux = np.array(truth["cameras"][camera]["mean_flux"], float)
    flux[truth["variable_index"]] = truth["cameras"][camera]["variable_flux"][k]
    half = int(np.ceil(6 * cfg.psf_sigma[0]))
    size = 2 * half + 1
    xi, yi = np.floor(pos[:, 0] + 0.5).astype(int), np.floor(pos[:, 1] + 0.5).astype(int)
    stamps = elliptical_gaussian_stamps(size, flux, pos[:, 0] - xi, pos[:, 1] - yi,
                                        cfg.psf_sigma[0], cfg.psf_sigma[1], cfg.psf_angle)
    _add_stamps(model, stamps, xi, yi)
    rng = np.random.default_rng([int(truth["seed"]), 1 + cfg.cameras.index(camera), k])
    return model, rng.poisson(model).astype(np.float64)


def frame_header(cfg: TimeSeriesSimConfig, truth: dict[str, Any], camera: str, k: int
                 ) -> fits.Header:
    """FITS header of a simulated frame (time, exposure, filter, binning, target, site)."""
    h = fits.Header()
    t = Time(truth["mjd_start"][k], format="mjd", scale="utc")
    h["DATE-OBS"] = (t.isot, "start of exposure (UTC)")
    h["MJD-OBS"] = (float(truth["mjd_start"][k]), "start of exposure (MJD, UTC)")
    h["EXPTIME"] = (float(cfg.exptime), "exposure time [s]")
    h["FILTER"] = (camera, "filter")
    h["CAMERA"] = (cfg.cameras.index(camera) + 1, "camera number")
    h["BINNING"] = (f"{cfg.binning}x{cfg.binning}", "on-chip binning")
    h["GAIN"] = (1.0, "e-/ADU")
    h["RA"] = (float(cfg.ra), "target right ascension [deg]")
    h["DEC"] = (float(cfg.dec), "target declination [deg]")
    h["OBSGEO-B"] = (float(cfg.site[0]), "observatory latitude [deg]")
    h["OBSGEO-L"] = (float(cfg.site[1]), "observatory longitude [deg, east]")
    h["OBSGEO-H"] = (float(cfg.site[2]), "observatory height [m]")
    h["INSTRUME"] = ("SKYSUB-SIM", "simulated by skysub.simulate.timeseries")
    return h


def frame_name(camera: str, k: int) -> str:
    return f"{camera}_{k:05d}.fits"


def describe(cfg: TimeSeriesSimConfig, truth: dict[str, Any]) -> str:
    """The variable's parameters, printed as the opticam tutorial does."""
    vi = truth["variable_index"]
    lines = [f"variable source is at ({truth['x'][vi]:.0f}, {truth['y'][vi]:.0f})",
             f"variability RMS: {100 * cfg.rms:.2f} %",
             f"variability frequency: {cfg.frequency:.3f} Hz",
             "variability phase lags:"]
    lines += [f"    {cam}-band: {cfg.lag(cam):.3f} radians" for cam in cfg.cameras]
    return "\n".join(lines)


def simulate_observations(out_directory: str | Path, n_images: int = 100,
                          config: TimeSeriesSimConfig | None = None, *, seed: int = 0,
                          overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Write ``n_images`` frames per camera (``<camera>_<k>.fits``) and ``truth.json``.

    Parameters
    ----------
    out_directory : str or Path
        Created if needed.  Refuses to write into a folder that already holds FITS files unless
        ``overwrite`` (which first removes the ``*.fits`` files there).
    n_images : int
        Frames per camera.
    config : TimeSeriesSimConfig, optional
    seed : int
    overwrite, quiet : bool

    Returns
    -------
    dict
        The truth (see :func:`simulate_truth`) plus ``paths`` (camera -> list of files).
    """
    from ..io import _atomic_write, check_output, write_fits_product

    cfg = config or TimeSeriesSimConfig()
    out = Path(out_directory)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a directory")
    existing = sorted(out.glob("*.fits")) if out.exists() else []
    if existing and not overwrite:
        raise OutputExistsError(f"{out} already holds {len(existing)} FITS files; use "
                                "--overwrite (overwrite=True) to replace them")
    check_output(out / "truth.json", overwrite=overwrite)
    truth = simulate_truth(cfg, n_images, seed)
    for old in existing:
        old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[str]] = {cam: [] for cam in cfg.cameras}
    jobs = [(cam, k) for k in range(int(n_images)) for cam in cfg.cameras]
    for cam, k in progress(jobs, desc="Generating observations", quiet=quiet, unit="frame"):
        _, frame = render_frame(cfg, truth, cam, k)
        p = write_fits_product(out / frame_name(cam, k), frame.astype(np.float32),
                               header=frame_header(cfg, truth, cam, k), overwrite=True)
        paths[cam].append(str(p))
    text = json.dumps(truth, indent=1)
    _atomic_write(out / "truth.json", lambda tmp: tmp.write_text(text))
    return {**truth, "paths": paths}
