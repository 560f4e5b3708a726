"""Lumos' unsupervised transfer learning on pairs of observations (eq. 11-12): pairs from a
table (:func:`find_pairs`) or from exposures (:func:`pairs_from_exposures`), their tensors
(:func:`pair_tensors`), and the last-layer fine-tuning (:func:`fine_tune_pairs`).
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...image import Image
from ...stamps import cutouts
from ..aperture import source_shapes
from .data import TENSOR_KEYS, _catalog_mag, _neighbour_channel, _tensors, torch_where_mag


class _LastLayerOnly:
    """Adapter for the Trainer: trains ``net.last`` only, keeping every BatchNorm in eval mode
    (frozen running statistics), as Lumos' transfer learning requires."""

    def __new__(cls, net):
        import torch

        class Tuner(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.net = inner

            def train(self, mode: bool = True):
                super().train(mode)
                self.net.eval()
                self.net.last.train(mode)
                return self

            def forward(self, *a):
                return self.net(*a)

        return Tuner(net)


def fine_tune_pairs(net, pairs: dict, sims: dict, *, faint_mag: float = 20.5,
                    pair_weight: float = 1.0, epochs: int = 10, lr: float = 1e-4,
                    batch_size: int = 128, seed: int = 0, device: str = "auto",
                    threads: int | None = None, quiet: bool = True):
    """Unsupervised transfer learning (Lumos eq. 11-12): fine-tune only the last dense layer on
    pairs of observations of the same objects (pair-overlap loss) plus the supervised loss on
    simulations, weighted equally (``pair_weight`` = 1).

    ``pairs``: tensors of the first and second observation (keys of :data:`TENSOR_KEYS` minus
    ``y`` suffixed ``_1`` / ``_2``) and ``ratio`` = unit_2 / unit_1 (both observations must be
    in the same calibrated flux units); ``sims``: supervised tensors (``TENSOR_KEYS``).
    Simulations are resampled to the number of pairs.  Returns the Trainer history.
    """
    import torch

    from ...nn.lumos import lumos_loss, pair_overlap_nll
    from ...nn.trainer import TrainConfig, Trainer

    n = len(pairs["ratio"])
    if n == 0:
        raise InputError("no pairs of observations to fine-tune on")
    g = np.random.default_rng(seed)
    pick = torch.from_numpy(g.integers(0, len(sims["y"]), n))
    data = {f"s_{k}": sims[k][pick] for k in TENSOR_KEYS}
    data.update({k: v for k, v in pairs.items()})
    tuner = _LastLayerOnly(net)
    sup_loss_mag = torch_where_mag

    def loss(model, b):
        def run(p):
            return model(b[f"{p}x"].float(), b[f"{p}feats"], b[f"{p}coords"], b[f"{p}mag"],
                         b[f"{p}has_mag"], b[f"{p}key"])

        a, m, s = run("s_")
        sup = lumos_loss(a, m, s, b["s_y"], sup_loss_mag({"mag": b["s_mag"],
                                                          "has_mag": b["s_has_mag"]}),
                         faint_mag=faint_mag, likelihood=b["s_has_mag"] <= 0)
        a1, m1, s1 = run("x1_")
        a2, m2, s2 = run("x2_")
        r = b["ratio"][:, None]
        return sup + pair_weight * pair_overlap_nll(a1, m1, s1, a2, m2 * r, s2 * r)

    tc = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), seed=seed,
                     device=device, threads=threads, quiet=quiet, patience=None,
                     scheduler="step", scheduler_kwargs={"step_size": max(1, epochs // 2),
                                                         "gamma": 0.1})
    trainer = Trainer(tuner, loss, tc, parameters=net.last.parameters())
    hist = trainer.fit(data)
    net.eval()
    return hist


def pair_tensors(first: dict, second: dict) -> dict:
    """Pair tensors for :func:`fine_tune_pairs` from two :func:`_tensors`-style dicts."""
    import torch

    out = {}
    for p, t in (("x1_", first), ("x2_", second)):
        for k in ("x", "feats", "coords", "mag", "has_mag", "key"):
            out[p + k] = t[k]
    out["ratio"] = torch.from_numpy((np.asarray(second["unit"]) / np.asarray(first["unit"]))
                                    .astype(np.float32))
    return out


def read_pairs(path):
    """A pairs table (``id, image_1, image_2``; CSV, ECSV or FITS) for :func:`fine_tune_pairs`."""
    from pathlib import Path

    from astropy.table import Table

    p = Path(path)
    if not p.exists():
        raise InputError(f"--pairs {p}: no such file (give a table with id, image_1, image_2 "
                         "or 'auto')")
    try:
        fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(p.suffix.lower())
        t = Table.read(p, format=fmt) if fmt else Table.read(p)
    except Exception as exc:  # noqa: BLE001 -- any reader failure is the user's file
        raise InputError(f"--pairs {p}: cannot read it as a table ({exc})") from None
    missing = [c for c in ("id", "image_1", "image_2") if c not in t.colnames]
    if missing:
        raise InputError(f"--pairs {p}: needs columns id, image_1, image_2 (missing "
                         f"{', '.join(missing)}; has {', '.join(t.colnames)})")
    return t


def find_pairs(table, *, max_pairs: int = 20000, seed: int = 0):
    """Pairs of observations of the same object in the same band from a table with columns
    ``id``, ``image`` and ``band`` (e.g. simulator truth, or photometry tables with a band
    column): consecutive observations of each (id, band) are paired.  Returns a Table with
    ``id, band, image_1, image_2``."""
    from astropy.table import Table

    for c in ("id", "image", "band"):
        if c not in table.colnames:
            raise InputError(f"pairs table needs column {c!r} (has {table.colnames})")
    ids = np.asarray(table["id"])
    bands = np.asarray(table["band"]).astype(str)
    imgs = np.asarray(table["image"]).astype(str)
    order = np.lexsort((imgs, ids, bands))
    ids, bands, imgs = ids[order], bands[order], imgs[order]
    same = (ids[1:] == ids[:-1]) & (bands[1:] == bands[:-1]) & (imgs[1:] != imgs[:-1])
    i = np.flatnonzero(same)
    if len(i) > max_pairs:
        i = np.sort(np.random.default_rng(seed).choice(i, max_pairs, replace=False))
    return Table({"id": ids[i], "band": bands[i], "image_1": imgs[i], "image_2": imgs[i + 1]})


def pairs_from_exposures(images: list[Image], catalogs: list, pairs, settings,
                         keys: list[str], psf: np.ndarray,
                         neighbour_catalogs: list | None = None, joint: bool = True,
                         ratio: bool = False, deblend: bool = False) -> dict:
    """Network tensors of both observations of each pair.  ``images``: exposures (with names);
    ``catalogs``: per exposure, its catalogue rows with ``x, y`` and shape columns; ``pairs``:
    Table ``id, image_1, image_2``; ``neighbour_catalogs``: per exposure, every catalogued
    source (the neighbour channel; None for networks without one)."""
    import torch

    from ...simulate.galaxies import model_images, neighbour_map

    if len(pairs) == 0:
        raise InputError("no pairs to fine-tune on (the pairs table is empty)")
    by_name = {im.name: (im, c) for im, c in zip(images, catalogs, strict=True)}
    nmaps: dict[str, np.ndarray] = {}
    if neighbour_catalogs is not None:
        for im, nc in zip(images, neighbour_catalogs, strict=True):
            nmaps[im.name] = neighbour_map(im.shape, np.asarray(nc["x"], float),
                                           np.asarray(nc["y"], float),
                                           source_shapes(nc, len(nc)),
                                           _catalog_mag(nc, len(nc)), psf, settings)
    firsts, seconds = [], []
    for col, acc in (("image_1", firsts), ("image_2", seconds)):
        for name in np.unique(np.asarray(pairs[col]).astype(str)):
            if name not in by_name:
                raise InputError(f"pairs table names image {name!r}, which is not among the "
                                 "training exposures")
            rows = np.flatnonzero(np.asarray(pairs[col]).astype(str) == name)
            im, cat = by_name[name]
            cid = np.asarray(cat["id"])
            pos = {v: i for i, v in enumerate(cid)}
            ci = np.array([pos.get(v, -1) for v in np.asarray(pairs["id"])[rows]])
            if (ci < 0).any():
                raise InputError(f"pairs table: id {np.asarray(pairs['id'])[rows][ci < 0][0]} "
                                 f"is not in the catalogue rows of {name}")
            c = cat[ci]
            x, y = np.asarray(c["x"], float), np.asarray(c["y"], float)
            st = cutouts(im, x, y, settings.stamp_size)
            shapes = source_shapes(c, len(c))
            models = model_images(shapes, psf, np.nan_to_num(st.dx), np.nan_to_num(st.dy),
                                  settings)
            mag = np.asarray(c["mag"], float) if "mag" in c.colnames else None
            from ...simulate.trainingdata import key_name

            k = key_name(im.meta.band, im.meta.epoch)
            if k not in keys:
                keys.append(k)
            nb = None
            if nmaps:
                nb = _neighbour_channel(nmaps[name], x, y, _catalog_mag(c, len(c)), models)
            t = _tensors(st.data, st.valid, models, x, y, im.shape, mag, keys.index(k), torch,
                         neighbours=nb, joint=joint, ratio=ratio, deblend=deblend)
            t["rows"] = rows
            acc.append(t)

    def gather(parts):
        rows = np.concatenate([p["rows"] for p in parts])
        inv = np.argsort(rows)
        out = {k: torch.cat([p[k] for p in parts])[torch.from_numpy(inv)]
               for k in ("x", "feats", "coords", "mag", "has_mag", "key")}
        out["unit"] = np.concatenate([p["unit"] for p in parts])[inv]
        out["ok"] = np.concatenate([p["ok"] for p in parts])[inv]
        return out

    a, b = gather(firsts), gather(seconds)
    keep = torch.from_numpy(a["ok"] & b["ok"])
    pt = pair_tensors(a, b)
    return {k: v[keep] for k, v in pt.items()}
