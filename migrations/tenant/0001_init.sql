-- Tables of one tenant. Runs inside the tenant's own schema (search_path set by the
-- migrator to "<TENANT_SCHEMA_PREFIX><lower(company_id)>"); names stay unqualified.
-- Every row keeps the version of the last event applied to it: (ver_ts, ver_src, ver_seq) =
-- (event time in unix seconds, 1 realtime / 0 history, stream sequence). An event older than
-- the row's version never overwrites it.

CREATE TABLE chats (
    chat_id                text PRIMARY KEY,
    company_id             text NOT NULL,
    agent_id               text,
    jid                    text,
    phone_number           text,
    push_name              text,
    group_name             text,
    custom_name            text,
    assigned_to            text,
    is_group               boolean,
    not_spam               boolean,
    unread_count           bigint,
    conversation_timestamp bigint,
    last_message           jsonb,
    ver_ts                 bigint NOT NULL,
    ver_src                smallint NOT NULL,
    ver_seq                bigint NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- No foreign key to chats: a message may arrive before its chat.
CREATE TABLE messages (
    message_id         text PRIMARY KEY,
    company_id         text NOT NULL,
    chat_id            text,
    agent_id           text,
    jid                text,
    flow               text,
    from_phone         text,
    to_phone           text,
    message_type       text,
    message_text       text,
    message_url        text,
    message_obj        jsonb,
    "key"              jsonb,
    status             text,
    message_timestamp  bigint,
    campaign           jsonb,
    is_deleted         boolean NOT NULL DEFAULT false,
    edited_message_obj jsonb,
    ver_ts             bigint NOT NULL,
    ver_src            smallint NOT NULL,
    ver_seq            bigint NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_chat ON messages (chat_id, message_timestamp);

CREATE TABLE contacts (
    agent_id     text NOT NULL,
    phone_number text NOT NULL,
    company_id   text NOT NULL,
    chat_id      text,
    push_name    text,
    custom_name  text,
    "type"       text,
    status       text,
    notes        text,
    tags         text[],
    avatar       text,
    assigned_to  text,
    origin       text,
    ver_ts       bigint NOT NULL,
    ver_src      smallint NOT NULL,
    ver_seq      bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, phone_number)
);

CREATE TABLE agents (
    agent_id     text PRIMARY KEY,
    company_id   text NOT NULL,
    status       text,
    agent_name   text,
    phone_number text,
    host_name    text,
    "version"    text,
    qr_code      text,
    ver_ts       bigint NOT NULL,
    ver_src      smallint NOT NULL,
    ver_seq      bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per (agent, phone) onboarded by a first inbound message.
CREATE TABLE onboarding_log (
    id           bigserial PRIMARY KEY,
    agent_id     text NOT NULL,
    phone_number text NOT NULL,
    company_id   text NOT NULL,
    chat_id      text,
    message_id   text,
    origin       text,
    tags         text[],
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, phone_number)
);
