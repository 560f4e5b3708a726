"""Lumos' flux PDFs as 5-Gaussian mixtures: the network's mixtures over many stamps
(:func:`predict_mixtures`), their summaries (:func:`mixture_summary`: mean and std (eq. 15-16),
mode, median, sigma68, sigma95, eta (eq. 22)) and the division by the prior-free training
density (:func:`divide_training_prior`, the data-only likelihood).
"""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("mode", "mean", "median")


SUMMARY_KEYS = ("flux_mean", "flux_std", "flux_mode", "flux_median", "flux_sigma68",
                "flux_sigma95", "eta")


# -- the data-only likelihood ----------------------------------------------------------------------

def divide_training_prior(alpha, mu, sigma, knee: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The likelihood from a posterior learned under the prior-free training density.

    The no-magnitude mode is trained on fluxes drawn with density ``p(f) ~ 1 / (max(f, 0) +
    knee)`` (:func:`skysub.simulate.galaxies.locally_flat_flux`), so what the network learns
    is the posterior ``L(f) p(f) / Z``: tilted towards faint fluxes by ``p``.  The likelihood
    is that posterior times ``w(f) = max(f, 0) + knee``.  A Gaussian component times ``w`` is
    not Gaussian; each component is replaced by the Gaussian with the same zeroth, first and
    second moments (exact, closed form with z = mu / sigma):

        E[w]     = knee + mu Phi(z) + sigma phi(z)
        E[X w]   = knee mu + (mu^2 + sigma^2) Phi(z) + mu sigma phi(z)
        E[X^2 w] = knee (mu^2 + sigma^2) + (mu^3 + 3 mu sigma^2) Phi(z)
                   + sigma (mu^2 + 2 sigma^2) phi(z)

    and the weights become ``alpha E[w]`` (renormalised).  All in the network's normalised
    flux units (``knee`` too).  Returns ``(alpha, mu, sigma)``.
    """
    from scipy.special import ndtr

    a = np.asarray(alpha, float)
    m = np.asarray(mu, float)
    s = np.asarray(sigma, float)
    k = float(knee)
    z = m / s
    Phi, phi = ndtr(z), np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    m2 = m * m + s * s
    e0 = k + m * Phi + s * phi
    e1 = k * m + m2 * Phi + m * s * phi
    e2 = k * m2 + (m ** 3 + 3 * m * s * s) * Phi + s * (m * m + 2 * s * s) * phi
    new_m = e1 / e0
    new_s = np.sqrt(np.maximum(e2 / e0 - new_m ** 2, 1e-12 * s * s))
    w = a * e0
    return w / w.sum(-1, keepdims=True), new_m, new_s


# -- point estimates ------------------------------------------------------------------------------

def _comp_pdf(f: np.ndarray, a: np.ndarray, m: np.ndarray, s: np.ndarray, z: np.ndarray
              ) -> np.ndarray:
    """Truncated-mixture density at points f (n, p) for parameters (n, k); z = mass on [0, inf)."""
    u = (f[:, :, None] - m[:, None, :]) / s[:, None, :]
    d = (a / (s * z))[:, None, :] * np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)
    return np.where(f >= 0, d.sum(-1), 0.0)


def _bisection_cdf(A: np.ndarray, M: np.ndarray, S: np.ndarray, lower: float | None):
    """``x -> skysub.metrics.mixture_cdf(A, M, S, x, lower=lower)`` for the bisection: the
    parameters are checked and the truncation masses computed once, not at every step; the
    same operations on the same numbers otherwise (bitwise equal; tested)."""
    from scipy.special import ndtr

    from ...metrics.pit import _mixture_params

    w, m, s, _, ok0 = _mixture_params(A, M, S, np.zeros(len(A)))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        tail = None if lower is None else ndtr(-((float(lower) - m) / s))

    def cdf(x: np.ndarray) -> np.ndarray:
        xx = x[:, None]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            z = (xx - m) / s
            if tail is None:
                comp = ndtr(z)
            else:
                comp = (tail - ndtr(-z)) / tail
                comp = np.where(xx < lower, 0.0, np.clip(comp, 0.0, 1.0))
            c = np.sum(w * comp, axis=1)
        return np.where(ok0 & np.isfinite(x), np.clip(c, 0.0, 1.0), np.nan)

    return cdf


def mixture_summary(alpha, mu, sigma, *, lower: float | None = 0.0, n_iter: int = 60
                    ) -> dict[str, np.ndarray]:
    """Point estimates of Gaussian-mixture PDFs, vectorised over objects.

    Parameters
    ----------
    alpha, mu, sigma : (n, k) weights (normalised here), means, widths
    lower : truncate every component to [lower, inf) (Lumos eq. 10: 0); None = no truncation
    n_iter : bisection steps for the quantiles

    Returns
    -------
    dict of (n,) arrays: ``flux_mean`` (eq. 15), ``flux_std`` (sqrt of eq. 16), ``flux_mode``
    (highest density), ``flux_median``, ``flux_sigma68`` = (q84 - q16) / 2 (eq. 14),
    ``flux_sigma95`` = (q97.5 - q2.5) / 2, ``eta`` = sigma95 / sigma68 - 1 (eq. 22).
    """
    from scipy.special import ndtr

    a = np.atleast_2d(np.asarray(alpha, float))
    m = np.atleast_2d(np.asarray(mu, float))
    s = np.atleast_2d(np.asarray(sigma, float))
    a = a / a.sum(1, keepdims=True)
    n = len(a)
    lo_t = -np.inf if lower is None else float(lower)
    # component moments (truncated normal on [lower, inf) when lower is given)
    if lower is None:
        cm, cv, z = m, s * s, np.ones_like(m)
    else:
        al = (lo_t - m) / s
        z = np.clip(ndtr(-al), 1e-300, None)
        lam = np.exp(-0.5 * al * al) / np.sqrt(2 * np.pi) / z
        cm = m + s * lam
        cv = s * s * np.clip(1 + al * lam - lam * lam, 0.0, None)
    mean = (a * cm).sum(1)  # eq. 15
    var = (a * (cv + (cm - mean[:, None]) ** 2)).sum(1)  # eq. 16
    # quantiles by vectorised bisection on the mixture CDF (skysub.metrics.mixture_cdf)
    qs = np.array([0.025, 0.16, 0.5, 0.84, 0.975])
    lo = np.min(m - 10 * s, axis=1)
    if lower is not None:
        lo = np.maximum(lo, lo_t)
    hi = np.max(m + 10 * s, axis=1)
    L = np.repeat(lo[None], len(qs), 0).ravel()
    H = np.repeat(hi[None], len(qs), 0).ravel()
    target = np.repeat(qs, n)
    A, M, S = (np.tile(v, (len(qs), 1)) for v in (a, m, s))
    cdf = _bisection_cdf(A, M, S, lower)
    for _ in range(n_iter):
        mid = 0.5 * (L + H)
        c = cdf(mid)
        below = c < target
        L = np.where(below, mid, L)
        H = np.where(below, H, mid)
    q = (0.5 * (L + H)).reshape(len(qs), n)
    # mode: coarse grid plus the component means, then a fine grid around the best point
    grid = np.linspace(0, 1, 256)[None] * (hi - lo)[:, None] + lo[:, None]
    cand = np.concatenate([grid, np.clip(m, lo[:, None], None)], axis=1)
    best = cand[np.arange(n), np.argmax(_comp_pdf(cand, a, m, s, z), axis=1)]
    step = (hi - lo) / 255
    fine = best[:, None] + np.linspace(-2, 2, 129)[None] * step[:, None]
    if lower is not None:
        fine = np.maximum(fine, lo_t)
    mode = fine[np.arange(n), np.argmax(_comp_pdf(fine, a, m, s, z), axis=1)]
    s68 = 0.5 * (q[3] - q[1])
    s95 = 0.5 * (q[4] - q[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = s95 / s68 - 1.0  # eq. 22
    return {"flux_mean": mean, "flux_std": np.sqrt(var), "flux_mode": mode, "flux_median": q[2],
            "flux_sigma68": s68, "flux_sigma95": s95, "eta": eta}


def predict_mixtures(net, x, feats, coords, mag, has_mag, key, *, batch_size: int = 512,
                     device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the network over all rows in batches (EVERY row is returned, whatever the batch
    size); mixtures in normalised units as numpy arrays."""
    import torch

    dev = device or next(net.parameters()).device
    outs: list[tuple] = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            sl = slice(s, s + batch_size)
            a, m, sg = net(x[sl].float().to(dev), feats[sl].to(dev), coords[sl].to(dev),
                           mag[sl].to(dev), has_mag[sl].to(dev), key[sl].to(dev))
            outs.append((a.double().cpu().numpy(), m.double().cpu().numpy(),
                         sg.double().cpu().numpy()))
    if not outs:
        k = net.arch.n_components
        return np.zeros((0, k)), np.zeros((0, k)), np.zeros((0, k))
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))  # type: ignore
