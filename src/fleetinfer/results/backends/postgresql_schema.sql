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
    stored_at   TIMESTAMPTZ      NOT NULL DEFAULT now(),
    payload     JSONB,           -- NULL when the store keeps only the payload's hash
    payload_sha256 TEXT,         -- sha256 of the payload's canonical JSON
    models      TEXT             -- the model versions that answered its calls: "cdnet@2"
);
-- Migration of a table made before payloads were kept.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS payload JSONB;
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS payload_sha256 TEXT;
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS models TEXT;
CREATE INDEX IF NOT EXISTS {index} ON {table} (status);
