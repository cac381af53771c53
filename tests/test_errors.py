import pytest

from saelign.errors import SaelignError, require


def test_require_passes_truthy_and_raises_the_message_on_falsy():
    require(True, "unused")
    require([0], "unused")
    for falsy in (False, 0, "", [], None):
        with pytest.raises(SaelignError, match="^field must be positive$"):
            require(falsy, "field must be positive")
