import psycopg
import pytest

from collector.schema import migrate
from tests.support.postgres import Postgres


@pytest.fixture
def pg(tmp_path):
    """A PostgreSQL cluster of this test's own (it may restart or kill it), migrated."""
    server = Postgres(tmp_path)
    server.start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        migrate(conn)
    yield server
    server.stop()


@pytest.fixture
def db(pg):
    """An autocommit connection to ``pg``, for the test's own queries."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        yield conn
