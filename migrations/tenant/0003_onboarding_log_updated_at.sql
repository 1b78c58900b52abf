-- onboarding_log gets updated_at like every other tenant table: its row moves to an earlier
-- message when that message is processed late (see 0002), and readers can tell when it did.
-- now() is stable, so existing rows take the time of this migration without a table rewrite.
ALTER TABLE onboarding_log
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
