-- Row types of the onboarding statements' parameters (see 0003): a batch sends each tenant's
-- onboarding messages as one binary array of rows_onboarding, and the first realtime
-- contacts.upsert of each contact as one array of rows_first_upserts. seq is the event's
-- stream sequence; empty strings stand for absent values, as the statements read them.
CREATE TYPE rows_onboarding AS (
  agent_id text, phone_number text, chat_id text, message_id text, origin text, tags text[],
  assigned_to text, seq int8);
CREATE TYPE rows_first_upserts AS (agent_id text, phone_number text, seq int8);
