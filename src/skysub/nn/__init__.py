"""Pure-torch networks and their training machinery.

Nothing in ``skysub.nn`` reads FITS files or catalogues: wrappers in ``skysub.background``,
``skysub.photometry`` and ``skysub.removal`` adapt these networks to skysub's estimator and
photometer protocols.

- :mod:`skysub.nn.device` -- device choice (CPU default, GPU when present), threads, seeds
- :mod:`skysub.nn.trainer` -- the one training loop (best checkpoint, early stopping, resume)
- :mod:`skysub.nn.modelfile` -- model files (weights + JSON card) and the registry of kinds
- :mod:`skysub.nn.bkgnet` -- BKGnet (background and its error at each source)
"""
