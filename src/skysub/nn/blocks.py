"""Building blocks shared by the stamp networks (BKGnet, Lumos): the convolutional trunk and
the preset machinery of their architecture dataclasses."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

from torch import nn

#: tuple-valued architecture fields, stored as JSON lists in model cards
_LIST_FIELDS = ("channels", "kernels", "hidden")


def conv_trunk(block: str, channels, kernels, cin: int, *,
               ceil_mode: bool = False) -> nn.Sequential:
    """``strided``: conv (stride 2) -> BN -> LeakyReLU per block, BN foldable into the conv;
    ``pooled``: the papers' conv -> max-pool -> BN -> LeakyReLU."""
    layers: list[nn.Module] = []
    for cout, k in zip(channels, kernels, strict=True):
        if block == "strided":
            layers += [nn.Conv2d(cin, cout, k, stride=2, padding=(k - 1) // 2, bias=False),
                       nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]
        elif block == "pooled":
            layers += [nn.Conv2d(cin, cout, k, padding=k // 2),
                       nn.MaxPool2d(2, ceil_mode=ceil_mode), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.1)]
        else:
            raise ValueError(f"unknown block type {block!r}")
        cin = cout
    return nn.Sequential(*layers)


class PresetArch:
    """Mixin for architecture dataclasses with named presets (``PRESETS``, ``NAME``)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    NAME: ClassVar[str] = "network"

    @classmethod
    def from_preset(cls, preset: str = "lean", **kw):
        if preset not in cls.PRESETS:
            raise ValueError(f"unknown {cls.NAME} preset {preset!r}; known: "
                             f"{', '.join(cls.PRESETS)}")
        p = cls.PRESETS[preset]
        return cls(preset=preset, block=p["block"], channels=tuple(p["channels"]),
                   kernels=tuple(p["kernels"]), hidden=tuple(p["hidden"]), **kw)

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in _LIST_FIELDS:
            d[k] = list(d[k])
        return d


def arch_kwargs(cls, arch: dict) -> dict:
    """The fields of ``cls`` from a model card's ``arch`` (lists back to tuples)."""
    known = set(cls.__dataclass_fields__)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in arch.items() if k in known}
