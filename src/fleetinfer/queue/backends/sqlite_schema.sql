-- fleetinfer SQLite broker: every queue of one database file lives in these two tables.
-- A message row is visible when visible_at <= now; it is in flight when it holds a receipt and
-- visible_at > now (its visibility deadline); it is delayed when it holds no receipt and
-- visible_at > now. Times are Unix seconds (REAL).
CREATE TABLE IF NOT EXISTS messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    sent_at       REAL    NOT NULL,
    visible_at    REAL    NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT,
    dedup_id      TEXT  -- one live message per (queue, dedup_id): index made by the broker
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at);

CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    receive_count INTEGER NOT NULL,
    sent_at       REAL    NOT NULL,
    dead_at       REAL    NOT NULL,
    dedup_id      TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_by_queue ON dead_letters (queue, seq);
