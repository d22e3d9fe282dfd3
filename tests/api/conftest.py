"""The tests of the query routes run twice: with the fast answers (app/api/fast_lane.py) and
through FastAPI (MIRRORPOOL_FAST_PATH=false), which must answer alike.

The other modules here test what comes before the app (connection limits), what neither way
changes (probes, health details, docs, the OpenAPI document and its generated client, log
redaction, the access log, which one middleware writes for both, workers, named queries and
streams, which FastAPI answers either way) or, for
test_request_paths.py, both ways side by side already: they run once, with the fast answers,
unless pytest is given --every-api-test-both-ways.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REQUEST_PATHS

BOTH_WAYS = frozenset(
    {
        "test_auth.py",
        "test_bounded_results.py",
        "test_gate.py",
        "test_hostile.py",
        "test_limits.py",
        "test_metrics.py",
        "test_neon.py",
        "test_query.py",
        "test_secrets.py",
        "test_transaction.py",
        "test_validation_problems.py",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `request_path` (tests/conftest.py) for the tests that run both ways."""
    every = metafunc.config.getoption("--every-api-test-both-ways")
    if "request_path" in metafunc.fixturenames and (
        every or Path(metafunc.definition.path).name in BOTH_WAYS
    ):
        metafunc.parametrize("request_path", REQUEST_PATHS, indirect=True, scope="session")
