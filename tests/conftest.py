"""Session-wide real services. Missing binaries make these fixtures fail, never skip."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from services import RedisServer, ServiceError, TansuBroker

from sinks.clickhouse import ChdbBackend, ensure_schema


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI points the root logger at that test's captured stderr
    (``setup_logging``); later tests' threads then wrote to a closed file ("Logging
    error"). Each test gets back the root logger it started with."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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


@pytest.fixture(scope="module")
def own_kafka(request):
    """A Tansu broker for one test module. Tansu (memory storage) was seen to lose messages
    whose delivery reports had come, when several producers wrote the same partitions at
    once: 44 to 77 send commands, twice late in a full run on the session's broker (by
    then holding hundreds of topics), once in a run of the chaos module alone. Modules
    whose flows run several producers take a broker of their own, so no other module's
    topics weigh on it (a module overrides ``kafka`` with this one)."""
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


@pytest.fixture(scope="module")
def chdb_dir(chdb_url: str) -> Iterator[str]:
    """The session's chdb directory, its engine kept up for the whole module."""
    path = chdb_url.removeprefix("chdb://")
    keep = ChdbBackend(path)
    yield path
    keep.close()


@pytest.fixture
def backend(chdb_dir: str) -> Iterator[ChdbBackend]:
    """A connection of its own to the session's chdb (one streaming insert at a time)."""
    b = ChdbBackend(chdb_dir)
    yield b
    b.close()


@pytest.fixture
def db(backend: ChdbBackend, request: pytest.FixtureRequest) -> str:
    """A fresh database with the schema, named after the test module."""
    name = f"{request.module.__name__.rsplit('.', 1)[-1]}_{uuid.uuid4().hex[:8]}"
    ensure_schema(backend, name)
    return name
