-- The collector's first schema: events by month, each device's progress, gaps,
-- chain breaks, conflicts and quarantine. Applied once by `scan-collector migrate`
-- (collector/schema.py records it in schema_migrations).

-- Every event stored once. Partitioned by the month of `ts` (the scan's time):
-- old months detach or drop whole. The primary key must hold the partition key;
-- (event_id, ts) is as good as event_id alone, because every copy of an event
-- carries the same ts (only `backfilled` and `sent_ts` differ between copies).
CREATE TABLE events (
    event_id    uuid        NOT NULL,
    ts          timestamptz NOT NULL,
    device_id   text        NOT NULL,
    site_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    ledger_id   bigint      NOT NULL,
    schema      text        NOT NULL,   -- scan-event/1 or document-event/1
    movement    text,
    verdict     text        NOT NULL,
    reason      text,
    code        text,
    product_id  text,
    document_id text,
    hash        text        NOT NULL,
    prev_hash   text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    body        jsonb       NOT NULL,   -- the event as first received, every field
    PRIMARY KEY (event_id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX events_device_seq ON events (device_id, seq);         -- per-device seq
CREATE INDEX events_code ON events (code, ts) WHERE code IS NOT NULL; -- per-code history
CREATE INDEX events_site_ts ON events (site_id, ts);               -- per-site queries
-- Month partitions are made on demand (collector.schema.ensure_month).

-- One row per device. stored_through_seq is the highest seq such that every seq
-- 1..N is stored and committed: the receipt. It only moves forward.
CREATE TABLE devices (
    device_id          text PRIMARY KEY,
    site_id            text        NOT NULL,
    stored_through_seq bigint      NOT NULL DEFAULT 0,
    max_seq            bigint      NOT NULL DEFAULT 0,
    stored             bigint      NOT NULL DEFAULT 0,  -- rows in events
    duplicates         bigint      NOT NULL DEFAULT 0,  -- copies received again
    first_seen         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen          timestamptz NOT NULL DEFAULT clock_timestamp(),
    progress_at        timestamptz NOT NULL DEFAULT clock_timestamp(), -- a receipt is due
    status             text,        -- the retained {p}/status: online/offline
    status_at          timestamptz,
    health             jsonb,       -- the latest {p}/health
    health_at          timestamptz
);

-- A run of seqs missing below a device's max_seq, as the gap closer last saw it.
CREATE TABLE gaps (
    id              bigserial PRIMARY KEY,
    device_id       text        NOT NULL,
    site_id         text        NOT NULL,
    from_seq        bigint      NOT NULL,
    to_seq          bigint      NOT NULL,
    noticed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    requests        integer     NOT NULL DEFAULT 0,  -- cmd/resend sent for it
    last_request_at timestamptz,
    unclosed        boolean     NOT NULL DEFAULT false, -- still open after every retry
    closed_at       timestamptz
);
CREATE INDEX gaps_open ON gaps (device_id) WHERE closed_at IS NULL;

-- prev_hash not matching the hash of the row before it in the device's chain.
CREATE TABLE chain_breaks (
    device_id     text        NOT NULL,
    seq           bigint      NOT NULL,
    event_id      uuid        NOT NULL,
    ledger_id     bigint      NOT NULL,
    prev_hash     text        NOT NULL,
    expected      text,        -- the hash of the row before, as stored
    problem       text        NOT NULL,
    noticed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device_id, seq, event_id)
);

-- The same code dispensed (accepted) on two devices.
CREATE TABLE conflicts (
    code           text        NOT NULL,
    event_id       uuid        NOT NULL,  -- the later one stored
    device_id      text        NOT NULL,
    other_event_id uuid        NOT NULL,
    other_device_id text       NOT NULL,
    noticed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (code, event_id, other_event_id)
);

-- Whatever was received and not stored as an event, with the reason: nothing is dropped.
CREATE TABLE quarantine (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    topic       text        NOT NULL,
    reason      text        NOT NULL,  -- malformed_json, hash_mismatch, topic_mismatch, oversized, ...
    detail      text        NOT NULL,
    size        integer     NOT NULL,
    payload     bytea       NOT NULL
);
CREATE INDEX quarantine_reason ON quarantine (reason);
