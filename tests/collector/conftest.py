import itertools

import psycopg
import pytest

from tests.support.postgres import Postgres, database, migrated

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory):
    """One PostgreSQL cluster for the session's collector tests, with a migrated template
    database each test's own database is copied from (a cluster a test takes ~3 s to make)."""
    server = Postgres(tmp_path_factory.mktemp("pg-cluster"))
    server.start()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE collector_template")
        from collector.schema import migrate

        with psycopg.connect(server.dsn.rsplit("/", 1)[0] + "/collector_template", autocommit=True) as conn:
            migrate(conn)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg(pg_cluster):
    """A fresh migrated database of this test's own in the session's cluster: ``pg.dsn``.
    A test that restarts or kills PostgreSQL takes ``own_pg`` instead."""
    with database(pg_cluster, f"test_{next(_names)}", template="collector_template") as db:
        yield db


@pytest.fixture
def own_pg(tmp_path):
    """A PostgreSQL cluster of this test's own (it may restart or kill it), migrated."""
    with migrated(tmp_path) as server:
        yield server


@pytest.fixture
def db(pg):
    """An autocommit connection to ``pg``, for the test's own queries."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        yield conn
