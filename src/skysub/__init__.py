"""skysub: the sky background under astronomical sources, and the photometry that depends on it."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CatalogError,
    ConfigError,
    HeaderError,
    InputError,
    MissingFileError,
    OutputExistsError,
    SkysubError,
)
from .image import Image, ImageMeta, as_image  # noqa: E402

__all__ = [
    "__version__", "Image", "ImageMeta", "as_image", "SkysubError", "InputError",
    "MissingFileError", "CatalogError", "HeaderError", "ConfigError", "OutputExistsError",
]
