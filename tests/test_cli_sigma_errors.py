"""Every σ error of the command line names the option, the value and the rule (no "invalid parse_sigma value")."""

from __future__ import annotations

import pytest

from smoothed_energy_guidance.cli.main import main
from smoothed_energy_guidance.cli.sweep import parse_axis


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("--blur-sigma", "nan", "blur sigma must be > 0"),
        ("--blur-sigma", "-1", "blur sigma must be > 0"),
        ("--blur-sigma", "0", "blur sigma must be > 0"),
        ("--blur-sigma", "wide", "blur sigma must be a number"),
        ("--temporal-sigma", "nan", "temporal sigma must be >= 0"),
        ("--temporal-sigma", "-1", "temporal sigma must be >= 0"),
        ("--temporal-sigma", "-inf", "temporal sigma must be >= 0"),
    ],
)
def test_sigma_errors_name_the_option_the_value_and_the_rule(capsys, option, value, rule):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--model", "tiny-random", "--prompt", "x", option, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: '{value}': {rule}" in error, error
    assert "invalid" not in error and "expected one argument" not in error


def test_temporal_sigma_zero_and_inf_are_valid_and_a_sweep_states_the_temporal_rule():
    assert parse_axis("temporal-sigma=0,inf").values == (0.0, float("inf"))
    with pytest.raises(ValueError, match="temporal sigma must be >= 0") as refused:
        parse_axis("temporal-sigma=0,-1")
    assert "blur sigma" not in str(refused.value)
