import psycopg
import pytest

from tests.support.postgres import migrated


@pytest.fixture
def pg(tmp_path):
    """A PostgreSQL cluster of this test's own (it may restart or kill it), migrated."""
    with migrated(tmp_path) as server:
        yield server


@pytest.fixture
def db(pg):
    """An autocommit connection to ``pg``, for the test's own queries."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        yield conn
