-- Row types of the batch writer's statement parameters: a batch sends the rows of one tenant
-- table as one binary array of these (unnest($1::rows_messages[])). Every data column is text,
-- cast to the table's type in the statement; idx is the event's place in the batch and
-- (ver_ts, ver_src, ver_seq) its version. The columns follow the tenant tables in order; the
-- writer checks them when it connects and refuses to write with types that differ.
CREATE TYPE rows_chats AS (
  idx int4, chat_id text, company_id text, agent_id text, jid text, phone_number text,
  push_name text, group_name text, custom_name text, assigned_to text, is_group text,
  not_spam text, unread_count text, conversation_timestamp text, last_message text,
  ver_ts int8, ver_src int2, ver_seq int8);
CREATE TYPE rows_messages AS (
  idx int4, message_id text, company_id text, chat_id text, agent_id text, jid text,
  flow text, from_phone text, to_phone text, message_type text, message_text text,
  message_url text, message_obj text, "key" text, status text, message_timestamp text,
  campaign text, is_deleted text, edited_message_obj text,
  ver_ts int8, ver_src int2, ver_seq int8);
CREATE TYPE rows_contacts AS (
  idx int4, agent_id text, phone_number text, company_id text, chat_id text, push_name text,
  custom_name text, "type" text, status text, notes text, tags text, avatar text,
  assigned_to text, origin text,
  ver_ts int8, ver_src int2, ver_seq int8);
CREATE TYPE rows_agents AS (
  idx int4, agent_id text, company_id text, status text, agent_name text, phone_number text,
  host_name text, version text, qr_code text,
  ver_ts int8, ver_src int2, ver_seq int8);
