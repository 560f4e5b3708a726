"""Frame alignment by matching point sources: triangle invariants, then least squares.

Why our own matcher rather than astroalign: astroalign does the same thing (Beroiz et al. 2020:
triangles of nearest neighbours, invariants = ratios of side lengths, RANSAC) but brings
scikit-image as a dependency, returns scikit-image transform objects in its own convention and
warps images we never need warped (photometry is forced at transformed catalogue positions).
The matcher below is ~150 lines, keeps skysub's pixel convention (0-based, ``(x, y)`` = (column,
row)) and is tested against known shifts and rotations.

Algorithm (:func:`match_transform`):

1. take the ``max_sources`` brightest detections of each list;
2. form every triangle of them and its invariants ``(L2 / L1, L3 / L1)`` (sorted side lengths,
   invariant under translation, rotation, scale and reflection), vertices ordered by the side
   opposite them;
3. pair triangles whose invariants agree within ``invariant_tol`` (k-d tree), best first;
4. for each pair, the similarity transform of its three vertex pairs; count the reference
   sources that land within ``tol`` px of a frame source; keep the transform with most matches
   (ties: smaller RMS);
5. refine: re-match nearest neighbours within ``tol`` and fit the requested model
   (``"translation"``: mean offset; ``"affine"``: 6-parameter least squares), twice.

A :class:`Transform` maps REFERENCE coordinates to FRAME coordinates:
``(x_f, y_f) = matrix @ (x_r, y_r) + offset``.  Catalogue positions (reference frame) are put on
each frame with :meth:`Transform.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..errors import InputError

ALIGN_MODELS = ("translation", "affine")


@dataclass(frozen=True)
class Transform:
    """Reference -> frame pixel mapping ``p_frame = matrix @ p_ref + offset``.

    Attributes
    ----------
    matrix : (2, 2) array
    offset : (2,) array, px
    n_matches : sources matched when fitting (0 for an assumed identity)
    rms : RMS distance of the matched sources after the fit, px
    """

    matrix: np.ndarray
    offset: np.ndarray
    n_matches: int = 0
    rms: float = 0.0

    @classmethod
    def identity(cls) -> Transform:
        return cls(np.eye(2), np.zeros(2))

    def apply(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Frame positions of reference positions ``(x, y)``."""
        p = np.c_[np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))]
        q = p @ np.asarray(self.matrix).T + np.asarray(self.offset)
        return q[:, 0], q[:, 1]

    def inverse(self) -> Transform:
        """The frame -> reference mapping."""
        minv = np.linalg.inv(self.matrix)
        return Transform(minv, -minv @ self.offset, self.n_matches, self.rms)

    @property
    def rotation_deg(self) -> float:
        """Rotation angle (DEGREES, counter-clockwise) of the linear part."""
        m = np.asarray(self.matrix)
        return float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    def to_dict(self) -> dict:
        return {"matrix": np.asarray(self.matrix).tolist(),
                "offset": np.asarray(self.offset).tolist(),
                "n_matches": int(self.n_matches), "rms": float(self.rms),
                "rotation_deg": self.rotation_deg}

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        try:
            m = np.asarray(d["matrix"], float)
            o = np.asarray(d["offset"], float)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"a transform needs 'matrix' (2x2) and 'offset' (2): {exc}") from None
        if m.shape != (2, 2) or o.shape != (2,):
            raise InputError(f"transform matrix must be 2x2 and offset 2 numbers, got "
                             f"{m.shape}, {o.shape}")
        return cls(m, o, int(d.get("n_matches", 0)), float(d.get("rms", 0.0)))


class AlignmentError(InputError):
    """Two source lists could not be matched."""


def _triangles(p: np.ndarray, min_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """All triangles of the points ``p`` (n, 2): invariants (t, 2) and vertex indices (t, 3).

    Vertices are ordered so that vertex j is opposite the j-th longest side, which makes the
    order the same for similar triangles in both lists.
    """
    idx = np.array(list(combinations(range(len(p)), 3)), int)
    if len(idx) == 0:
        return np.zeros((0, 2)), np.zeros((0, 3), int)
    a, b, c = p[idx[:, 0]], p[idx[:, 1]], p[idx[:, 2]]
    # side opposite each vertex
    sides = np.c_[np.hypot(*(b - c).T), np.hypot(*(a - c).T), np.hypot(*(a - b).T)]
    order = np.argsort(-sides, axis=1)
    s = np.take_along_axis(sides, order, axis=1)
    verts = np.take_along_axis(idx, order, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.c_[s[:, 1] / s[:, 0], s[:, 2] / s[:, 0]]
    # drop flat triangles and ones whose vertex order is ambiguous (nearly equal sides)
    ok = (inv[:, 1] > min_ratio) & (s[:, 0] - s[:, 1] > 1e-3 * s[:, 0]) \
        & (s[:, 1] - s[:, 2] > 1e-3 * s[:, 0])
    return inv[ok], verts[ok]


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (rotation, scale, shift) taking ``src`` to ``dst`` (Umeyama)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sgn = np.sign(np.linalg.det(u @ vt)) or 1.0
    s_mat = np.diag([1.0, sgn])
    r = u @ s_mat @ vt
    var = (a * a).sum() / len(src)
    scale = (d * np.diag(s_mat)).sum() / var if var > 0 else 1.0
    m = scale * r
    return m, md - m @ ms


def _fit(src: np.ndarray, dst: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray]:
    if model == "translation" or len(src) < 3:
        return np.eye(2), (dst - src).mean(0)
    a = np.c_[src, np.ones(len(src))]
    sol, *_ = np.linalg.lstsq(a, dst, rcond=None)  # (3, 2): [M^T; t]
    return sol[:2].T, sol[2]


def _nearest(tree, q: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    d, j = tree.query(q, distance_upper_bound=tol)
    ok = np.isfinite(d)
    # keep one-to-one pairs: a frame source claimed twice keeps its closest reference source
    order = np.argsort(d[ok])
    seen: set[int] = set()
    keep = np.zeros(ok.sum(), bool)
    jj = j[ok]
    for k in order:
        if jj[k] not in seen:
            seen.add(int(jj[k]))
            keep[k] = True
    i_ok = np.flatnonzero(ok)[keep]
    return i_ok, j[i_ok]


def match_transform(ref_xy, frame_xy, *, model: str = "affine", tol: float = 2.0,
                    max_sources: int = 15, invariant_tol: float = 0.01,
                    min_matches: int = 3, max_candidates: int = 400) -> Transform:
    """The transform taking reference sources onto frame sources.

    Parameters
    ----------
    ref_xy, frame_xy : arrays (n, 2), (m, 2)
        Source positions [px], brightest first (only the first ``max_sources`` build triangles;
        all are used when counting and refining matches).
    model : {"translation", "affine"}
        Fitted model (``"affine"`` covers rotation, scale and shear).
    tol : float
        Match radius [px].
    max_sources : int
        Brightest sources used for triangles (C(15, 3) = 455 triangles per list).
    invariant_tol : float
        Largest distance between triangle invariants that are paired.
    min_matches : int
        Fewer matched sources raise :class:`AlignmentError`.
    max_candidates : int
        Triangle pairs tried at most.

    Returns
    -------
    Transform

    Raises
    ------
    AlignmentError
        Too few sources, or no transform matches ``min_matches`` sources.
    """
    from scipy.spatial import cKDTree

    if model not in ALIGN_MODELS:
        raise InputError(f"unknown alignment model {model!r}; expected one of {ALIGN_MODELS}")
    ref = np.asarray(ref_xy, float).reshape(-1, 2)
    frm = np.asarray(frame_xy, float).reshape(-1, 2)
    ref = ref[np.isfinite(ref).all(1)]
    frm = frm[np.isfinite(frm).all(1)]
    if min(len(ref), len(frm)) < min_matches:
        raise AlignmentError(f"too few sources to align: {len(ref)} in the reference, "
                             f"{len(frm)} in the frame (need {min_matches})")
    ftree = cKDTree(frm)
    best: tuple[int, float, np.ndarray, np.ndarray] | None = None
    if len(ref) >= 3 and len(frm) >= 3:
        inv_r, ver_r = _triangles(ref[:max_sources], 0.05)
        inv_f, ver_f = _triangles(frm[:max_sources], 0.05)
        if len(inv_r) and len(inv_f):
            pairs = cKDTree(inv_f).query_ball_tree(cKDTree(inv_r), r=invariant_tol)
            cand = [(np.hypot(*(inv_f[i] - inv_r[j])), i, j)
                    for i, js in enumerate(pairs) for j in js]
            cand.sort()
            for _, i, j in cand[:max_candidates]:
                m, t = _similarity(ref[ver_r[j]], frm[ver_f[i]])
                if not 0.8 < np.sqrt(abs(np.linalg.det(m))) < 1.25:
                    continue  # frames of one camera have the same pixel scale
                d, _ = ftree.query(ref @ m.T + t, distance_upper_bound=tol)
                ok = np.isfinite(d)
                n_ok = int(ok.sum())
                rms = float(np.sqrt(np.mean(d[ok] ** 2))) if n_ok else np.inf
                if best is None or n_ok > best[0] or (n_ok == best[0] and rms < best[1]):
                    best = (n_ok, rms, m, t)
                if n_ok >= 0.9 * min(len(ref), len(frm)) and rms < 0.3 * tol:
                    break
    if best is None or best[0] < min_matches:
        got = 0 if best is None else best[0]
        raise AlignmentError(f"no transform matches {min_matches} sources within {tol} px "
                             f"(best: {got}; {len(ref)} reference, {len(frm)} frame sources)")
    _, _, m, t = best
    for _ in range(3):
        i, j = _nearest(ftree, ref @ m.T + t, tol)
        if len(i) < min_matches:
            break
        m, t = _fit(ref[i], frm[j], model)
    i, j = _nearest(ftree, ref @ m.T + t, tol)
    if len(i) < min_matches:
        raise AlignmentError(f"only {len(i)} sources match after refinement (need "
                             f"{min_matches})")
    resid = frm[j] - (ref[i] @ m.T + t)
    rms = float(np.sqrt(np.mean((resid**2).sum(1))))
    return Transform(m, t, int(len(i)), rms)
