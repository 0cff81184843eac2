"""``optout lag --timeout``: a positive number of seconds, 5 by default; anything else is refused."""

from __future__ import annotations

import pytest

from services.cli.lag import DEFAULT_TIMEOUT
from services.cli.main import build_parser


def test_timeout_defaults_to_five_seconds_and_takes_a_positive_float() -> None:
    parser = build_parser()
    assert parser.parse_args(["lag"]).timeout == DEFAULT_TIMEOUT == 5.0
    assert parser.parse_args(["lag", "--timeout", "0.5"]).timeout == 0.5


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_timeout_refuses_what_is_not_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["lag", "--timeout", value])
    assert exited.value.code == 2
    assert f"argument --timeout: must be a number above 0, not '{value}'" in capsys.readouterr().err
