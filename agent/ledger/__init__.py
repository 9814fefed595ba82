"""Everything SQLite: the store that decides and records, and what serves it.

- :mod:`~agent.ledger.store`: :class:`Ledger`, one transaction per scan;
- :mod:`~agent.ledger.rules`: the duplicate and lifecycle rules as a table;
- :mod:`~agent.ledger.chain`: the hash chain and :func:`verify`;
- :mod:`~agent.ledger.schema`, :mod:`~agent.ledger.sqlite`, :mod:`~agent.ledger.checkpoint`;
- :mod:`~agent.ledger.outbox`: the uplink's reading side, on its own connection;
- :mod:`~agent.ledger.quarantine`: a damaged ledger found at start.

The names most callers need are here too, so ``from agent import ledger`` reads
as ``ledger.Ledger.open(...)``, ``ledger.verify(conn)``. Sinks and config do not
import this package: what they speak of is in :mod:`agent.domain`.
"""

from agent.ledger.chain import GENESIS, HASHED, HASHED_WHEN_SET, VerifyResult, row_hash, verify
from agent.ledger.checkpoint import WAL_RESTART_PAGES, Checkpointer
from agent.ledger.schema import APPEND_ONLY, SCHEMA_VERSION, create_schema
from agent.ledger.sqlite import CACHE_KIB, connect
from agent.ledger.store import Ledger, LedgerError, export_rows

__all__ = [
    "APPEND_ONLY",
    "CACHE_KIB",
    "GENESIS",
    "HASHED",
    "HASHED_WHEN_SET",
    "SCHEMA_VERSION",
    "WAL_RESTART_PAGES",
    "Checkpointer",
    "Ledger",
    "LedgerError",
    "VerifyResult",
    "connect",
    "create_schema",
    "export_rows",
    "row_hash",
    "verify",
]
