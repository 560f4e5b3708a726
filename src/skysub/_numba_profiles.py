"""numba kernel behind :func:`skysub.simulate.profiles.sersic_stamps` (imported on first use):
the Sérsic surface brightness at every Gauss-Legendre node, weighted and summed per pixel, for
one galaxy at a time -- no (galaxies x nodes) temporaries.

Same operations, in the same order and precision, as the numpy path
(:func:`skysub.simulate.profiles._evaluate`): the elliptical radius in float64, the two
exponentials and the logarithm in float32.  Only the float32 ``exp``/``log`` implementations
(libm's here, numpy's SIMD ones there) and the order of the per-pixel float64 sums differ:
~1e-7 relative per node.
"""

from __future__ import annotations

import math

import numpy as np

from ._numba_kernels import _jit


@_jit
def sersic_pixels(gx, gy, w, os, npix, cx, cy, r50, n, ba, theta_deg, b, out):
    """``out[k, p, q] = sum_{a, c} I_k(gx[q os + c], gy[p os + a]) w[p os + a] w[q os + c]``
    with ``I_k`` the Sérsic profile (I_e = 1) of galaxy ``k``."""
    m = cx.shape[0]
    one = np.float32(1.0)
    for k in range(m):
        t = theta_deg[k] * (np.pi / 180.0)
        ct = math.cos(t)
        st = math.sin(t)
        rr = r50[k] * r50[k]
        bak = ba[k]
        h = np.float32(0.5 / n[k])
        nb = -np.float32(b[k])
        x0 = cx[k]
        y0 = cy[k]
        for p in range(npix):
            for q in range(npix):
                acc = 0.0
                for a in range(os):
                    i = p * os + a
                    ddy = gy[i] - y0
                    for c in range(os):
                        j = q * os + c
                        ddx = gx[j] - x0
                        u = ddx * ct + ddy * st
                        v = -ddx * st + ddy * ct
                        vb = v / bak
                        q2 = (u * u + vb * vb) / rr
                        q2 = max(q2, 1e-30)
                        e = math.exp(math.log(np.float32(q2)) * h)
                        val = math.exp(nb * (e - one))
                        acc += np.float64(val) * (w[i] * w[j])
                out[k, p, q] = acc


__all__ = ["sersic_pixels"]
