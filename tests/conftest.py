"""Session-wide real services. Missing binaries make these fixtures fail, never skip."""

from __future__ import annotations

import pytest
from services import RedisServer, ServiceError, TansuBroker


def _serve(request: pytest.FixtureRequest, make):
    try:
        service = make()
        service.start()
    except ServiceError as e:
        failure = str(e)
    else:
        failure = None
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield service
    finally:
        if request.session.testsfailed:
            capman = request.config.pluginmanager.getplugin("capturemanager")
            with capman.global_and_fixture_disabled():
                print(f"\n--- {service.name} log tail ---\n{service.log_tail()}")
        service.stop()


@pytest.fixture(scope="session")
def kafka(request):
    """A Tansu Kafka broker on 127.0.0.1 (memory storage): `.bootstrap`, `.create_topics()`."""
    yield from _serve(request, TansuBroker)


@pytest.fixture(scope="session")
def redis_server(request):
    """A throwaway redis-server on 127.0.0.1: `.url` is redis://127.0.0.1:PORT/0."""
    yield from _serve(request, RedisServer)


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory):
    """One embedded ClickHouse directory for the whole session (chdb allows one per process):
    tests keep apart by database name."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"
