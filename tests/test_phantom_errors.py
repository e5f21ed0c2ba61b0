"""Parameter errors name the parameter, its value and the allowed range."""

import pytest

from calib.errors import PhantomParameterError, require_choice, require_positive, require_range


def test_messages():
    with pytest.raises(PhantomParameterError, match=r"^gls_pct=-55 is outside -40\.\.\+20 %$"):
        require_range("gls_pct", -55, -40, 20, "%")
    with pytest.raises(PhantomParameterError, match="fps=-5 must be > 0"):
        require_positive("fps", -5, "frames per second")
    with pytest.raises(PhantomParameterError, match="view='x' is unknown; choose one of a, b"):
        require_choice("view", "x", ("a", "b"))
    assert issubclass(PhantomParameterError, ValueError)
