-- One row naming this ops schema: a random id that tells apart databases sharing one NATS
-- (eventctl's redrive message ids carry it, so JetStream never deduplicates one database's
-- redrive against another's).
CREATE TABLE IF NOT EXISTS installation (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    one_row    boolean     NOT NULL DEFAULT true UNIQUE CHECK (one_row)
);
INSERT INTO installation DEFAULT VALUES ON CONFLICT DO NOTHING;
