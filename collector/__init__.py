"""The regional reference collector: MQTT in, PostgreSQL out, receipts back.

A deployable of its own (``pip install scan-agent[collector]``, ``scan-collector``).
It shares only the event format and its hash check with the agent
(:func:`agent.events.hashed_row`, :func:`agent.ledger.chain.row_hash`).

The data flow, one idea per module:

- :mod:`~collector.topics`: ``{prefix}/{site}/{device}/{kind}`` in, parts out (pure);
- :mod:`~collector.check`: one MQTT message → an event to store, or a reason to quarantine (pure);
- :mod:`~collector.intake`: the MQTT client (shared subscription, acknowledged after commit);
- :mod:`~collector.store`: one transaction per batch: events, device progress, chain, conflicts, quarantine;
- :mod:`~collector.chain`: which links between stored rows are broken (pure);
- :mod:`~collector.gaps`: missing seqs, and ``cmd/resend`` with backoff;
- :mod:`~collector.receipts`: ``{p}/receipt`` ``{"stored_through_seq": N}``, N only forward;
- :mod:`~collector.service`: the threads that join them; :mod:`~collector.report`, :mod:`~collector.cli`.
"""
