-- Operations schema: the tenant registry and the exhausted-events store.
-- Runs with search_path set to OPS_SCHEMA (default events_ops); names stay unqualified.

CREATE TABLE IF NOT EXISTS tenants (
    company_id        text PRIMARY KEY,
    schema_name       text NOT NULL UNIQUE,
    migration_version integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- Two ids that differ only by case must never share a schema.
CREATE UNIQUE INDEX IF NOT EXISTS tenants_company_id_lower ON tenants (lower(company_id));

CREATE TABLE IF NOT EXISTS exhausted_events (
    id               bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,      -- source stream:sequence[:item index]
    company_id       text NOT NULL,             -- raw tenant token (may be invalid)
    source_subject   text NOT NULL,
    error_class      text NOT NULL CHECK (error_class IN ('fatal', 'retryable')),
    reason           text NOT NULL,             -- "<code>: <message>"
    reason_code      text GENERATED ALWAYS AS (split_part(reason, ':', 1)) STORED,
    attempts         integer NOT NULL CHECK (attempts >= 0),
    original_payload bytea NOT NULL,            -- the exact original bytes
    dlq_metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    resolved         boolean NOT NULL DEFAULT false,
    resolved_at      timestamptz,
    notes            text
);
CREATE INDEX IF NOT EXISTS exhausted_events_company ON exhausted_events (company_id, last_failed_at);
CREATE INDEX IF NOT EXISTS exhausted_events_reason ON exhausted_events (reason_code, last_failed_at);
CREATE INDEX IF NOT EXISTS exhausted_events_subject ON exhausted_events (source_subject);
CREATE INDEX IF NOT EXISTS exhausted_events_unresolved ON exhausted_events (last_failed_at)
    WHERE NOT resolved;
