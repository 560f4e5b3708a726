"""Configuration sections are validated against their consumers' signatures: unknown keys with
the nearest valid name, wrong types with the expected type, always naming file and section --
over every key of every section of every preset."""

import tomllib
from importlib import resources

import pytest

from skysub.config import DICT_SECTIONS, list_presets, load_config
from skysub.config_check import section_schema
from skysub.errors import ConfigError


def _preset_raw(name):
    return tomllib.loads(resources.files("skysub").joinpath("presets", f"{name}.toml")
                         .read_text(encoding="utf-8"))


def _cases():
    for preset in list_presets():
        raw = _preset_raw(preset)
        for section in DICT_SECTIONS:
            for key, value in raw.get(section, {}).items():
                yield preset, section, key, value


CASES = list(_cases())


def test_the_cases_cover_every_section_of_the_presets():
    covered = {s for _, s, _, _ in CASES}
    assert covered == set(DICT_SECTIONS)
    assert len(CASES) > 90


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_is_valid(preset):
    load_config(preset)


def _write(tmp_path, preset, section, body):
    p = tmp_path / "typo.toml"
    p.write_text(f'base = "{preset}"\n[{section}]\n{body}\n')
    return p


def _typo(key):
    return key + "x" if len(key) < 4 else key[:-1] + key[-1] * 2 + "q"


@pytest.mark.parametrize(("preset", "section", "key", "value"), CASES,
                         ids=[f"{p}-{s}-{k}" for p, s, k, _ in CASES])
def test_every_key_is_known_checked_and_suggested(tmp_path, preset, section, key, value):
    schema = section_schema(section)
    assert key in schema  # every key a preset uses is a parameter of its consumer
    bad = _typo(key)
    with pytest.raises(ConfigError, match=rf"typo\.toml \[{section}\]: unknown key '{bad}' -- "
                                          rf"did you mean '{key}'\? valid: .*{key}"):
        load_config(_write(tmp_path, preset, section, f"{bad} = 1"))
    kinds = schema[key]
    if kinds is None or isinstance(value, dict):
        return
    wrong = next(text for text, kind in (("true", "bool"), ('"ten"', "str"), ("[1]", "list"),
                                         ("2.5", "number")) if kind not in kinds)
    with pytest.raises(ConfigError, match=rf"typo\.toml \[{section}\] {key}: expected .*, got"):
        load_config(_write(tmp_path, preset, section, f"{key} = {wrong}"))


def test_the_issue_messages(tmp_path):
    p = tmp_path / "typo.toml"
    p.write_text("[annulus]\nr_inn = 10\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "typo.toml [annulus]: unknown key 'r_inn' -- did you mean 'r_in'?" in msg
    assert "valid: ba, chunk_size, maxiters, min_pixels, name, r_in, r_out, sigma" in msg
    p.write_text('[annulus]\nr_in = "ten"\n')
    with pytest.raises(ConfigError, match=r"typo\.toml \[annulus\] r_in: expected a number, "
                                          r"got the string 'ten'$"):
        load_config(p)
    p.write_text("[annulus]\nmaxiters = 2.5\n")
    with pytest.raises(ConfigError, match="maxiters: expected an integer, got the number 2.5"):
        load_config(p)
    p.write_text("[annulus]\nr_in = 10\nr_out = 20\n")  # ints for floats are fine
    assert load_config(p).annulus == {"r_in": 10, "r_out": 20}
    p.write_text("[photometry]\naperture_radiuss = 4\n")
    with pytest.raises(ConfigError, match="did you mean 'aperture_radius'"):
        load_config(p)
