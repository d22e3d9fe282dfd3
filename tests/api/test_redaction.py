"""No DSN password appears in any response or log line."""

from __future__ import annotations

import logging

import pytest

from app.devdb import SERVICE, LocalPair
from app.redaction import RedactingFilter, redactor
from tests.conftest import serving_ready, settings_for
from tests.waiting import eventually

WRONG = "Wr0ng-but-still-secret"


async def test_passwords_stay_out_of_responses_and_logs(
    pair: LocalPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingFilter())
    # A mirror DSN with a wrong password: its failure is reported, its secret is not.
    mirror_dsn = pair.mirrors[0].dsn(user=SERVICE).replace(pair.password_of(SERVICE), WRONG)
    settings = settings_for(pair, mirror_dsn=mirror_dsn)
    async with serving_ready(settings) as (app, client):
        await eventually(
            lambda: app.state.cluster.node("mirror").state.reachable is False, "mirror marked down"
        )
        bodies = [
            (await client.get(path)).text
            for path in ("/health", "/health/ready", "/pool/stats", "/openapi.json", "/docs")
        ]
    logs = caplog.text + "\n".join(str(r.msg) for r in caplog.records)
    everything = "\n".join(bodies) + logs
    assert "password authentication failed" in everything
    for secret in (pair.password, WRONG):
        assert secret not in everything


def test_scrub_masks_registered_and_dsn_shaped_secrets() -> None:
    redactor.add("hunter2-registered")
    text = (
        "failed hunter2-registered host=db password=plain123 "
        "postgresql://app:urlpass@db/x password='quoted secret'"
    )
    scrubbed = redactor.scrub(text)
    for secret in ("hunter2-registered", "plain123", "urlpass", "quoted secret"):
        assert secret not in scrubbed
    assert "host=db" in scrubbed and "postgresql://app:***@db/x" in scrubbed
