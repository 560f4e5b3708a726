"""Survey configuration: TOML files and presets (configuration is data, not code).

A configuration is a small TOML file with a ``name``, an optional ``base`` (a preset name or
another TOML file to inherit from) and these sections::

    [header]      FITS keywords holding band, epoch, exptime, gain, rdnoise, night
    [annulus]     keyword arguments of skysub.background.annulus.AnnulusBackground
    [mesh]        keyword arguments of the mesh (SExtractor-style) background map
    [templates]   settings of the scattered-light templates (BKGnet eq. 1-2)
    [photometry]  photometer settings (aperture_radius [px], ...)
    [simulate]    settings of the CCD simulator (skysub.simulate.ccd.CCDSimConfig)
    [bkgnet]      BKGnet stamp geometry (stamp_size, mask_size [px], label_radius [px])
    [lumos]       Lumos galaxy-stamp simulation and training (skysub.photometry.lumos)
    [removal]     compact-source removal: model, apertures, [removal.masks] SNR -> hole-radius
                  table, [removal.train] training of the inpainting U-Net (skysub.removal)

Only ``[header]`` is interpreted here (as a :class:`HeaderKeys`); the other sections are plain
dicts that each consumer unpacks into its own class, so that the classes stay the single source
of truth for their defaults.  Two presets ship with the package: ``generic`` (a small, neutral
set-up) and ``paus`` (the PAUS numbers of BKGnet, Cabayol-Garcia et al.).

Example::

    # my_survey.toml -- PAUS settings with a smaller annulus
    base = "paus"
    name = "my-survey"
    [annulus]
    r_in = 20.0
    r_out = 35.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: Dict sections a configuration may hold besides ``[header]``.
DICT_SECTIONS = ("annulus", "mesh", "templates", "photometry", "simulate", "bkgnet", "lumos",
                 "removal")
#: Every top-level key a configuration file may hold.
TOP_LEVEL_KEYS = ("name", "base", "header", *DICT_SECTIONS)

_MAX_BASE_DEPTH = 10  # guards against `base` cycles


@dataclass(frozen=True)
class HeaderKeys:
    """FITS header keywords that hold each exposure's metadata.

    Each attribute is the keyword name (or None: never read from the header, only from
    overrides).

    Attributes
    ----------
    band : str or None
        Filter name (default ``FILTER``).
    epoch : str or None
        Camera epoch, e.g. "before"/"after" an intervention (default ``EPOCH``).
    exptime : str or None
        Exposure time in seconds (default ``EXPTIME``).
    gain : str or None
        Gain in e-/ADU (default ``GAIN``).
    rdnoise : str or None
        Read noise in electrons (default ``RDNOISE``).
    night : str or None
        Night label (default ``NIGHT``).
    """

    band: str | None = "FILTER"
    epoch: str | None = "EPOCH"
    exptime: str | None = "EXPTIME"
    gain: str | None = "GAIN"
    rdnoise: str | None = "RDNOISE"
    night: str | None = "NIGHT"

    @classmethod
    def from_dict(cls, section: dict[str, Any], *, source: str = "") -> HeaderKeys:
        """Build from a ``[header]`` section; unknown or non-string entries are a ConfigError."""
        where = f"{source}: " if source else ""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(names))
        if unknown:
            raise ConfigError(f"{where}unknown key(s) {', '.join(unknown)} in [header]; "
                              f"expected some of {', '.join(names)}")
        for k, v in section.items():
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"{where}[header] {k} must be a FITS keyword (a non-empty "
                                  f"string), got {v!r}")
        return cls(**{k: v.strip().upper() for k, v in section.items()})


@dataclass
class SurveyConfig:
    """A survey/instrument configuration.

    Attributes
    ----------
    name : str
        Configuration name (e.g. "paus").
    header : HeaderKeys
        Header keywords of the exposure metadata.
    annulus, mesh, templates, photometry, simulate, bkgnet, lumos, removal : dict
        Raw TOML sections ({} when absent); each consumer unpacks its own.
    source : str
        Where the configuration came from ("preset:paus" or a file path).
    """

    name: str
    header: HeaderKeys = field(default_factory=HeaderKeys)
    annulus: dict[str, Any] = field(default_factory=dict)
    mesh: dict[str, Any] = field(default_factory=dict)
    templates: dict[str, Any] = field(default_factory=dict)
    photometry: dict[str, Any] = field(default_factory=dict)
    simulate: dict[str, Any] = field(default_factory=dict)
    bkgnet: dict[str, Any] = field(default_factory=dict)
    lumos: dict[str, Any] = field(default_factory=dict)
    removal: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def check_keys(section: dict[str, Any], allowed: Any, where: str) -> None:
    """Raise a ConfigError naming ``where`` if ``section`` holds keys not in ``allowed``."""
    allowed = set(allowed)
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}; expected some of "
                          f"{', '.join(sorted(allowed))}")


def list_presets() -> list[str]:
    """Names of the presets shipped in ``skysub/presets`` (sorted)."""
    folder = resources.files("skysub").joinpath("presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` updated by ``override``, recursing into dicts present in both."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _load_raw(name_or_path: str | Path, depth: int = 0,
              relative_to: Path | None = None) -> tuple[dict[str, Any], str]:
    """Raw (merged over its bases) TOML dict of a preset or file, and its source label."""
    if depth > _MAX_BASE_DEPTH:
        raise ConfigError(f"configuration {name_or_path}: `base` chain deeper than "
                          f"{_MAX_BASE_DEPTH} (a cycle?)")
    presets = list_presets()
    if isinstance(name_or_path, str) and name_or_path in presets:
        source = f"preset:{name_or_path}"
        text = resources.files("skysub").joinpath("presets", f"{name_or_path}.toml").read_text(
            encoding="utf-8")
        folder = None
    else:
        path = Path(name_or_path).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.is_file():
            raise ConfigError(f"configuration {str(name_or_path)!r} is neither a preset nor an "
                              f"existing file; presets: {', '.join(presets)}")
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read configuration: {exc}") from None
        folder = path.parent
    raw = _parse(text, source)
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level section/key(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(TOP_LEVEL_KEYS)}")
    for k in ("header", *DICT_SECTIONS):
        if k in raw and not isinstance(raw[k], dict):
            raise ConfigError(f"{source}: [{k}] must be a table (section), got {raw[k]!r}")
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{source}: base must be a preset name or a file path, "
                              f"got {base!r}")
        base_raw, _ = _load_raw(base, depth + 1, relative_to=folder)
        base_raw.setdefault("name", base)
        raw = deep_merge(base_raw, raw)
    return raw, source


def load_config(name_or_path: str | Path | None = None) -> SurveyConfig:
    """Load a preset or a TOML configuration file.

    Parameters
    ----------
    name_or_path : str or Path, optional
        A preset name (see :func:`list_presets`: "generic", "paus"), or the path of a TOML
        file.  None gives the "generic" preset.  A file may set ``base = "paus"`` (a preset or
        a path, relative to the file) to inherit its settings and override some; dict sections
        are merged key by key.

    Returns
    -------
    SurveyConfig

    Raises
    ------
    ConfigError
        Unknown preset or missing file (the message lists the presets), invalid TOML, an
        unknown top-level section, a bad ``[header]`` entry, or a section key its consumer does
        not take / of the wrong type (:mod:`skysub.config_check`; the message names the file,
        the section, the nearest valid key or the expected type).
    """
    if name_or_path is None:
        name_or_path = "generic"
    raw, source = _load_raw(name_or_path)
    name = raw.get("name")
    if name is None:
        name = Path(str(name_or_path)).stem
    if not isinstance(name, str):
        raise ConfigError(f"{source}: name must be a string, got {name!r}")
    header = HeaderKeys.from_dict(raw.get("header", {}), source=source)
    from .config_check import check_section

    for k in DICT_SECTIONS:
        check_section(k, raw.get(k, {}), source)
    return SurveyConfig(name=name, header=header, source=source,
                        **{k: dict(raw.get(k, {})) for k in DICT_SECTIONS})
