"""The names the command line offers, in one module that imports nothing heavy.

The CLI builds its parsers from these (so ``skysub --help`` and ``skysub --version`` load no
astropy table, dask or torch); the library modules that implement them import them from here.
"""

from __future__ import annotations

#: background methods of ``skysub background`` and ``--background``
#: (:func:`skysub.workflows.make_background`)
BACKGROUND_METHODS = ("annulus", "templates", "mesh", "bkgnet", "inpaint")
#: photometers of ``skysub photometry`` (:func:`skysub.workflows.make_photometer`)
PHOTOMETERS = ("aperture", "optimal", "lumos")
#: stamps per forward pass of learned methods in ``skysub batch``, on a CPU and on a GPU
CPU_BATCH_SIZE = 256
GPU_BATCH_SIZE = 1024
