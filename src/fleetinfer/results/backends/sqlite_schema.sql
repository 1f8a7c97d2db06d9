-- fleetinfer SQLite results store: one row per task id; the first success wins (a failure gives way to a later success).
-- {table} is replaced by a validated, quoted identifier. value is JSON text.
-- A table made before payloads were kept gets its payload columns from the store (ALTER TABLE).
CREATE TABLE IF NOT EXISTS {table} (
    task_id     TEXT    PRIMARY KEY,
    task_name   TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    value       TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL,
    worker      TEXT    NOT NULL,
    started_at  REAL    NOT NULL,
    finished_at REAL    NOT NULL,
    stored_at   REAL    NOT NULL,
    payload     TEXT,   -- the payload as JSON text; NULL when the store keeps only its hash
    payload_sha256 TEXT, -- sha256 of the payload's canonical JSON
    models      TEXT    -- the model versions that answered its calls: "cdnet@2"
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (status);
