-- fleetinfer SQLite results store: one row per task id; the first success wins (a failure gives way to a later success).
-- {table} is replaced by a validated, quoted identifier. value is JSON text.
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
    stored_at   REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (status);
