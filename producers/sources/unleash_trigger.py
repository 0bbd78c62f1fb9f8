"""Unleash in the same database: a PL/pgSQL trigger on Unleash's ``events`` table that
writes the outbox row in the transaction of Unleash's own write.

Unleash writes its event in the transaction of the flag change, so the flag change,
its Unleash event and flagtrail's outbox row commit or roll back together: no event
can be lost between Unleash and flagtrail, and nothing polls.

The trigger builds exactly the record producers/sources/unleash.py builds (the
relay refuses a payload that is not canonical JSON, so any divergence would show as
a quarantined row, never as a silently different record): the same fields, the same
production rule, the same omission of oversized states, and a canonical JSON
encoder in PL/pgSQL with json.dumps' output (sorted keys by code point, ASCII with
\\uXXXX escapes and surrogate pairs, json's short escapes). What the policy says is
baked in at install time (the production environments, the chain, the limits):
install again after changing the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from producers.errors import ConfigError
from producers.events import SCHEMA_VERSION
from producers.policy import DISTINCT_APPROVER_MESSAGE, Policy
from producers.schema import OUTBOX_TABLE, ensure_schema
from producers.sources.common import OMITTED, production_environments
from producers.sources.unleash import CREATE_TYPES, DELETE_TYPES, ROLLOUT_TYPES
from producers.validation import Limits

TRIGGER = "flagtrail_unleash_outbox"
# the last Unleash event before the first install: `check` expects rows after it
WATERMARK_TABLE = "flagtrail_unleash_install"
FUNCTION = "flagtrail_unleash_event"

_JSON_STRING = r"""
CREATE OR REPLACE FUNCTION flagtrail_json_string(s text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
  out text := '';
  c text;
  code int;
BEGIN
  -- printable ASCII without quote or backslash: as it is (the common case)
  IF s ~ '^[\x20-\x7e]*$' AND strpos(s, '"') = 0 AND strpos(s, '\') = 0 THEN
    RETURN '"' || s || '"';
  END IF;
  FOR i IN 1..length(s) LOOP
    c := substr(s, i, 1);
    code := ascii(c);
    IF code = 34 THEN out := out || '\"';
    ELSIF code = 92 THEN out := out || '\\';
    ELSIF code = 10 THEN out := out || '\n';
    ELSIF code = 13 THEN out := out || '\r';
    ELSIF code = 9 THEN out := out || '\t';
    ELSIF code = 8 THEN out := out || '\b';
    ELSIF code = 12 THEN out := out || '\f';
    ELSIF code > 65535 THEN  -- astral: a UTF-16 surrogate pair, as json.dumps writes it
      code := code - 65536;
      out := out || '\u' || lpad(to_hex(55296 + (code >> 10)), 4, '0')
                 || '\u' || lpad(to_hex(56320 + (code & 1023)), 4, '0');
    ELSIF code < 32 OR code > 126 THEN
      out := out || '\u' || lpad(to_hex(code), 4, '0');
    ELSE
      out := out || c;
    END IF;
  END LOOP;
  RETURN '"' || out || '"';
END $fn$
"""

_JSON_NUMBER = r"""
CREATE OR REPLACE FUNCTION flagtrail_json_number(t text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
  f text;
BEGIN
  IF t ~ '^-?[0-9]+$' THEN  -- json reads an integer as int, written back as digits
    RETURN (t::numeric)::text;
  END IF;
  f := (t::float8)::text;  -- json reads anything else as a float: shortest repr
  IF f ~ '^-?[0-9]+$' THEN
    f := f || '.0';
  END IF;
  RETURN f;
END $fn$
"""

_CANONICAL = r"""
CREATE OR REPLACE FUNCTION flagtrail_canonical_json(v jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  CASE jsonb_typeof(v)
    WHEN 'object' THEN
      RETURN '{' || coalesce((
        SELECT string_agg(flagtrail_json_string(key) || ':' || flagtrail_canonical_json(value),
                          ',' ORDER BY key COLLATE "C")
        FROM jsonb_each(v)), '') || '}';
    WHEN 'array' THEN
      RETURN '[' || coalesce((
        SELECT string_agg(flagtrail_canonical_json(e.value), ',' ORDER BY e.n)
        FROM jsonb_array_elements(v) WITH ORDINALITY AS e(value, n)), '') || ']';
    WHEN 'string' THEN RETURN flagtrail_json_string(v #>> '{}');
    WHEN 'number' THEN RETURN flagtrail_json_number(v::text);
    WHEN 'boolean' THEN RETURN v::text;
    ELSE RETURN 'null';
  END CASE;
END $fn$
"""

_DEPTH = r"""
CREATE OR REPLACE FUNCTION flagtrail_json_depth(v jsonb) RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  CASE jsonb_typeof(v)
    WHEN 'object' THEN
      RETURN 1 + coalesce((SELECT max(flagtrail_json_depth(value)) FROM jsonb_each(v)), 0);
    WHEN 'array' THEN
      RETURN 1 + coalesce((SELECT max(flagtrail_json_depth(value))
                           FROM jsonb_array_elements(v)), 0);
    ELSE RETURN 0;
  END CASE;
END $fn$
"""

_BOUNDED = r"""
CREATE OR REPLACE FUNCTION flagtrail_bounded_state(v jsonb, max_depth int, max_bytes int)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
  size int;
BEGIN
  IF flagtrail_json_depth(v) > max_depth THEN
    RETURN jsonb_build_object('{omitted}', 'nested deeper than ' || max_depth || ' levels');
  END IF;
  size := length(flagtrail_canonical_json(v));
  IF size > max_bytes THEN
    RETURN jsonb_build_object(
      '{omitted}', size || ' bytes, over the ' || max_bytes || '-byte limit');
  END IF;
  RETURN v;
END $fn$
"""


def _sql_list(values: frozenset[str] | list[str]) -> str:
    return ", ".join(_literal(v) for v in sorted(values)) or "NULL"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class TriggerSettings:
    chain_id: str
    production: frozenset[str]  # normalised environment names under the production rules
    limits: Limits

    @classmethod
    def from_policy(cls, chain_id: str, policy: Policy) -> TriggerSettings:
        return cls(chain_id, production_environments(policy), policy.limits)


def _event_function(settings: TriggerSettings) -> str:
    production = settings.production
    return f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  env text := coalesce(NEW.environment, '');
  kind text := coalesce(NEW.type, '');
  act text;
  after jsonb;
  production boolean;
  findings jsonb := '[]'::jsonb;
  controls jsonb := '["CC6.1","CC6.6"]'::jsonb;
  at timestamptz := date_trunc('milliseconds', NEW.created_at);
  record jsonb;
BEGIN
  IF NEW.feature_name IS NULL OR NEW.feature_name = '' THEN
    RETURN NULL;  -- not about a flag (users, tokens, projects, segments)
  END IF;
  act := CASE
    WHEN kind IN ({_sql_list(CREATE_TYPES)}) THEN 'create'
    WHEN kind IN ({_sql_list(DELETE_TYPES)}) THEN 'delete'
    WHEN kind IN ({_sql_list(ROLLOUT_TYPES)}) THEN 'rollout'
    ELSE 'update' END;
  after := CASE kind
    WHEN 'feature-environment-enabled' THEN
      jsonb_build_object('enabled', true, 'environment', env)
    WHEN 'feature-environment-disabled' THEN
      jsonb_build_object('enabled', false, 'environment', env)
    ELSE NEW.data::jsonb END;
  IF env = '' THEN
    production := act = 'delete';
  ELSE
    production := lower(btrim(normalize(env, NFKC))) = ANY(ARRAY[{_sql_list(production)}]::text[]);
  END IF;
  IF production THEN  -- Unleash's open-source edition records no approver
    findings := jsonb_build_array(jsonb_build_object(
      'rule', 'distinct-approver', 'control', 'CC8.1',
      'message', {_literal(DISTINCT_APPROVER_MESSAGE)}));
    controls := '["CC6.1","CC6.6","CC7.2"]'::jsonb;
  END IF;
  record := jsonb_build_object(
    'schema_version', {SCHEMA_VERSION},
    'chain_id', {_literal(settings.chain_id)},
    'event_id', 'unleash:' || NEW.id::text,
    'recorded_at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'actor', coalesce(NEW.created_by, ''),
    'approver', NULL,
    'role', '',
    'flag_key', NEW.feature_name,
    'environment', env,
    'action', act,
    'before', flagtrail_bounded_state(NEW.pre_data::jsonb, {settings.limits.max_depth},
                                      {settings.limits.max_state_bytes}),
    'after', flagtrail_bounded_state(after, {settings.limits.max_depth},
                                     {settings.limits.max_state_bytes}),
    'reason', '',
    'change_ref', '',
    'soc2_controls', controls,
    'meta', NULL,
    'source', jsonb_build_object(
      'platform', 'unleash', 'id', NEW.id::text, 'type', kind,
      'project', NEW.project, 'user_id', NEW.created_by_user_id),
    'policy_findings', findings);
  INSERT INTO {OUTBOX_TABLE} (chain_id, event_id, recorded_at_us, payload)
  VALUES ({_literal(settings.chain_id)}, 'unleash:' || NEW.id::text,
          (extract(epoch FROM at) * 1000000)::bigint, flagtrail_canonical_json(record))
  ON CONFLICT (event_id) DO NOTHING;
  RETURN NULL;
END $fn$
"""


def trigger_statements(settings: TriggerSettings) -> list[str]:
    return [
        _JSON_STRING,
        _JSON_NUMBER,
        _CANONICAL,
        _DEPTH,
        _BOUNDED.replace("{omitted}", OMITTED),
        _event_function(settings),
        f"CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT ON events "
        f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()",
    ]


def install_trigger(engine: Engine, settings: TriggerSettings) -> None:
    """Create the outbox and the trigger in Unleash's database (idempotent)."""
    if engine.dialect.name != "postgresql":
        raise ConfigError("the Unleash trigger needs Unleash's PostgreSQL database URL")
    ensure_schema(engine)
    with engine.begin() as conn:
        if not _has_events_table(conn):
            raise ConfigError(
                f"database {engine.url.database!r} has no Unleash events table: "
                "point --database-url at Unleash's own database"
            )
        for statement in trigger_statements(settings):
            conn.execute(text(statement))
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {WATERMARK_TABLE} (after_event_id bigint NOT NULL, "
                "installed_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO {WATERMARK_TABLE} (after_event_id) "
                "SELECT coalesce(max(id), 0) FROM events "
                f"WHERE NOT EXISTS (SELECT 1 FROM {WATERMARK_TABLE})"
            )
        )


def uninstall_trigger(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TRIGGER IF EXISTS {TRIGGER} ON events"))


def trigger_state(conn: Connection) -> str:
    """``enabled``, ``disabled`` (an operator ran ALTER TABLE … DISABLE TRIGGER) or
    ``missing``: what `flagtrail sources unleash check` reports."""
    row = conn.execute(
        text("SELECT tgenabled FROM pg_trigger WHERE tgname = :name AND NOT tgisinternal"),
        {"name": TRIGGER},
    ).first()
    if row is None:
        return "missing"
    return "disabled" if row.tgenabled == "D" else "enabled"


def _has_events_table(conn: Connection) -> bool:
    return conn.execute(text("SELECT to_regclass('events') IS NOT NULL")).scalar_one()
