-- fleetinfer PostgreSQL results store: one row per task id; the first success wins (a failure gives way to a later success).
-- {table} and {index} are replaced by quoted identifiers (psycopg.sql.Identifier).
CREATE TABLE IF NOT EXISTS {table} (
    task_id     TEXT COLLATE "C" PRIMARY KEY,
    task_name   TEXT             NOT NULL,
    status      TEXT             NOT NULL,
    value       JSONB,
    error       TEXT,
    attempts    INTEGER          NOT NULL,
    worker      TEXT             NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL,
    stored_at   TIMESTAMPTZ      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (status);
