"""FitConfig built in Python (`geoface.FitConfig(...)`) checks each field as `build_config` checks a params.yaml
section: type, documented range, choices, finiteness; and `help(FitConfig)` documents every field."""
from dataclasses import fields, replace

import numpy as np
import pytest

from flame_fitting.core.params import ParamsError, build_config
from flame_fitting.fit import FitConfig


def _bad_values():
    """(field, value) just outside every documented range, of the field's own type."""
    for f in fields(FitConfig):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        step = 1 if isinstance(f.default, int) or f.default is None else 0.5
        if lo is not None:
            yield f.name, lo - step
        if hi is not None:
            yield f.name, hi + step


BAD = list(_bad_values())


def test_ranges_are_checked_for_many_fields():
    assert len(BAD) >= 50  # nearly every field has a range: the parametrised test below covers them all


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_a_value_outside_its_range_is_refused_as_params_yaml_refuses_it(name, value):
    with pytest.raises(ParamsError, match=rf"params.yaml:fit\.{name}: "):
        build_config(FitConfig, {name: value}, "params.yaml:fit")
    with pytest.raises(ParamsError, match=rf"^FitConfig\.{name}: .*(below the minimum|above the maximum)"):
        FitConfig(**{name: value})


@pytest.mark.parametrize("name, value, why", [
    ("iterations", "10", "expected an integer"),         # was run as range("10"): a solver error in every frame
    ("iterations", 2.5, "expected an integer"),
    ("tolerance", "1e-6", "expected a number"),          # text is a number in params.yaml (YAML 1.1) only
    ("prior_shape", float("nan"), "not a finite number"),
    ("robust_scale_px", float("inf"), "not a finite number"),
    ("robust_loss", "tukey", "not one of"),
    ("noise_model", "yes", "expected true/false"),
])
def test_wrong_types_and_non_finite_numbers_are_refused(name, value, why):
    with pytest.raises(ParamsError, match=rf"^FitConfig\.{name}: .*{why}"):
        FitConfig(**{name: value})


def test_valid_values_build_the_same_config_both_ways():
    settings = {"iterations": 5, "robust_scale_px": 2, "n_shape": 10, "min_views": 3, "robust_loss": "huber"}
    assert FitConfig(**settings) == build_config(FitConfig, settings, "params.yaml:fit")
    assert FitConfig(iterations=np.int64(7), seed=np.int32(3)).iterations == 7  # numpy scalars are their numbers
    assert replace(FitConfig(), iterations=0).iterations == 0
    with pytest.raises(ParamsError, match="FitConfig.min_views: 0 is below the minimum 1"):
        replace(FitConfig(), min_views=0)  # replace builds a new config: checked too


def test_help_documents_every_field_with_its_default_and_range():
    doc = FitConfig.__doc__
    for f in fields(FitConfig):
        assert f"    {f.name} = {f.default!r}: {f.metadata['doc']}" in doc, f.name
    assert "iterations = 30: maximum Levenberg-Marquardt iterations (accepted + rejected steps) [≥ 0, ≤ 10000]" \
        in doc
