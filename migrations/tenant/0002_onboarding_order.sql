-- Onboarding follows stream order, whatever order events are processed in (redeliveries
-- after a crash, retries through the DLQ worker). Each side of the decision keeps the stream
-- sequence that put it there, so an event processed late can still correct it:
--   contacts.onboard_seq       the earliest inbound message that onboarded the contact
--                              (NULL: not onboarded);
--   contacts.first_upsert_seq  the earliest realtime contacts.upsert of the contact
--                              (NULL: none yet; 0: the contact existed before any realtime
--                              event could onboard it: a history import, or a row older
--                              than this migration);
--   contacts.onboarded_cols    which of chat_id (1), origin (2), tags (4), assigned_to (8)
--                              hold what onboarding wrote and no contact event has written
--                              since: what a correction may replace;
--   onboarding_log.stream_seq  the message the log row names (0 for rows older than this
--                              migration, which are never moved).
ALTER TABLE contacts
    ADD COLUMN onboard_seq bigint,
    ADD COLUMN first_upsert_seq bigint DEFAULT 0,
    ADD COLUMN onboarded_cols smallint NOT NULL DEFAULT 0;
ALTER TABLE onboarding_log
    ADD COLUMN stream_seq bigint NOT NULL DEFAULT 0;
