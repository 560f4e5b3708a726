"""Compact-source removal: SNR-adaptive masks, partial-convolution U-Net inpainting on whole
maps, photometry of the removed sources (Madarász et al. 2025).

- :func:`remove_sources` -- remove catalogued sources from a map, measure them
- :class:`InpaintBackground` -- the network as a background estimator (``--method inpaint``)
- :class:`MaskTable`, :func:`mask_radii` -- SNR-adaptive hole radii (eq. 1, Table 3)
- :func:`train_inpaint` -- ``skysub train inpaint``
- :func:`evaluate_removal` -- ``skysub evaluate removal``

Layout (the plan BKGnet and Lumos follow too; ``docs/architecture.md``): :mod:`.core` inference
(:func:`remove_sources`), :mod:`.estimator` the background-estimator adapter, :mod:`.masks`,
:mod:`.apertures` photometry of the removed light, :mod:`.levels` a card's calibration applied at
inference, :mod:`.training`, :mod:`.calibration` (measures what :mod:`.levels` applies),
:mod:`.evaluation`, :mod:`.cli`.
"""

from importlib import import_module

# resolved on first use (PEP 562): .core imports torch (~2 s), and every `skysub` command
# builds the `remove` parser from this package
_EXPORTS = {"DEFAULT_MODEL": ".core", "RemovalResult": ".core", "normalise": ".core",
            "remove_sources": ".core", "MaskTable": ".masks", "mask_radii": ".masks",
            "peak_snr": ".masks"}

__all__ = ["DEFAULT_MODEL", "InpaintBackground", "MaskTable", "RemovalResult", "evaluate_removal",
           "mask_radii", "normalise", "peak_snr", "remove_sources", "train_inpaint"]


def __getattr__(name: str):  # lazy: training/evaluation pull in more machinery
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    if name == "train_inpaint":
        from .training import train_inpaint

        return train_inpaint
    if name == "evaluate_removal":
        from .evaluation import evaluate_removal

        return evaluate_removal
    if name == "InpaintBackground":
        from .estimator import InpaintBackground

        return InpaintBackground
    raise AttributeError(name)
