"""`[lumos] calibration_shrink`: read from a configuration file, validated (a negative value is
an error naming the key), and passed as ``shrink_n`` to the injection calibration's fit."""

from types import SimpleNamespace

import numpy as np
import pytest

from skysub.config import load_config
from skysub.errors import ConfigError
from skysub.photometry.lumos import injection
from skysub.photometry.lumos.settings import LumosSettings
from skysub.photometry.lumos.training import _injection_step


def _settings(tmp_path, line):
    p = tmp_path / "c.toml"
    p.write_text(f'base = "generic"\n[lumos]\n{line}\n')
    return LumosSettings.from_config(dict(load_config(p).lumos))


def test_default_is_off(tmp_path):
    assert LumosSettings().calibration_shrink == 0
    assert _settings(tmp_path, "calibration_bins = 6").calibration_shrink == 0
    assert _settings(tmp_path, "calibration_shrink = 37.5").calibration_shrink == 37.5


@pytest.mark.parametrize("value", ["-1", "-0.5", "true", '"150"', "inf", "nan"])
def test_bad_value_is_an_error_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"\[lumos\]:? calibration_shrink"):
        _settings(tmp_path, f"calibration_shrink = {value}")


def test_config_value_reaches_the_fit(tmp_path, monkeypatch):
    ls = _settings(tmp_path, "calibration_shrink = 150")
    assert ls.calibration_shrink == 150
    seen = {}

    def fake_calibration(net, card, ims, cats, zps, regions, **kw):
        seen.update(kw)
        return {"calibration": None, "note": "stub: no injections", "check": {}}

    monkeypatch.setattr(injection, "injection_calibration", fake_calibration)
    monkeypatch.setattr(injection, "held_out_regions", lambda sim, is_val, n: [0.0] * n)
    stub = SimpleNamespace(as_dict=dict)
    _injection_step(None, stub, ["r/None"], stub, ls, {"mag": 1.0}, {}, False,
                    {"sim": {}, "ims": [None, None], "nbcats": [None, None]},
                    np.zeros(2, bool), seed=1, say=lambda *a: None)
    assert seen["shrink_n"] == 150.0
    assert seen["bins"] == ls.calibration_bins and seen["target"] == ls.calibration_injections



def test_placement_default_and_bad_value(tmp_path):
    """`[lumos] calibration_placement`: "empty" by default (the generic preset too),
    "catalogue" opt-in, anything else an error naming the key."""
    assert LumosSettings().calibration_placement == "empty"
    assert _settings(tmp_path, "calibration_bins = 6").calibration_placement == "empty"
    assert (_settings(tmp_path, 'calibration_placement = "catalogue"').calibration_placement
            == "catalogue")
    with pytest.raises(ConfigError, match=r"\[lumos\]: calibration_placement"):
        _settings(tmp_path, 'calibration_placement = "near"')
