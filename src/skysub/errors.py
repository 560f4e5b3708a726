"""The skysub error family.

Every error skysub raises on bad input is a :class:`SkysubError`; each subclass is also the
matching builtin (``ValueError``, ``FileNotFoundError``, ``KeyError``...) so that callers who
catch builtins keep working.  Messages name the offending file, column or parameter and say
what was expected.

Which to raise:

- :class:`InputError` -- a value, array or table the user passed is unusable.
- :class:`MissingFileError` -- a path does not exist.
- :class:`CatalogError` -- a catalogue lacks a column or has bad values.
- :class:`HeaderError` -- a FITS header lacks a keyword and no override was given.
- :class:`ConfigError` -- a TOML configuration or preset is invalid.
- :class:`OutputExistsError` -- an output exists and ``overwrite`` was not given, or an
  output path is one of the inputs.
"""

from __future__ import annotations


class SkysubError(Exception):
    """Base class of every error skysub raises deliberately."""


class InputError(SkysubError, ValueError):
    """An input value, array or table is unusable."""


class MissingFileError(SkysubError, FileNotFoundError):
    """A file the user named does not exist."""


class CatalogError(InputError):
    """A catalogue lacks a required column or holds bad values."""


class HeaderError(InputError):
    """A FITS header lacks a keyword and no override was given."""


class ConfigError(InputError):
    """A configuration file or preset is invalid."""


class OutputExistsError(SkysubError, FileExistsError):
    """An output exists (and ``overwrite`` is False) or would replace an input."""
