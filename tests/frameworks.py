"""The agent frameworks the integration tests run with (see tests/run.py and .ci/run).

A test module calls :func:`require` before importing its framework: without the
package it is skipped with a message, unless ``SESSION_STORE_REQUIRE_FRAMEWORKS=1``
(CI sets it), which makes that a failure.
"""

from __future__ import annotations

import importlib
import os

import pytest

REQUIRED = os.environ.get("SESSION_STORE_REQUIRE_FRAMEWORKS") == "1"


def require(module: str, extra: str) -> None:
    """Skip the calling test module when ``module`` cannot be imported (fail instead when required)."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        reason = (f"{module} is not installed ({e}): pip install -e '.[{extra}]', or run python3 tests/run.py, "
                  "which installs it")
        if REQUIRED:
            pytest.fail(reason + " (SESSION_STORE_REQUIRE_FRAMEWORKS=1: not skipping)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
