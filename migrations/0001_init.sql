-- 0001_init
-- Revises: (none)
-- Creation Date: 2026-11-27
-- Reason: first schema: per-user defaults, per-guild presets, the jobs table (with what restart recovery needs),
--         and the embedding-cache index. Applied by bot/store/migrate.py inside one transaction.
--
-- Conventions: Discord ids are INTEGER (snowflakes fit a signed 64-bit value); JSON columns are TEXT checked with
-- json_valid(); timestamps in jobs/presets/defaults are ISO-8601 UTC text written by bot/store/db.py (they sort as
-- text); the cache index uses unix seconds (REAL) because its protocol lives in engine/ and orders by recency.
-- Job kinds are checked in Python (JobKind) so a new kind needs no table rebuild; statuses are checked here.

CREATE TABLE user_defaults (
    user_id     INTEGER PRIMARY KEY,
    settings    TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
    updated_at  TEXT    NOT NULL
);

CREATE TABLE guild_presets (
    id            INTEGER PRIMARY KEY,
    guild_id      INTEGER NOT NULL,
    name          TEXT    NOT NULL,                 -- as typed (stripped, NFC)
    name_key      TEXT    NOT NULL,                 -- casefolded name: uniqueness and prefix search
    params        TEXT    NOT NULL CHECK (json_valid(params)),
    created_by    INTEGER NOT NULL,
    created_at    TEXT    NOT NULL,
    uses          INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    last_used_at  TEXT,
    UNIQUE (guild_id, name_key)
);

CREATE TABLE jobs (
    id                      TEXT    PRIMARY KEY,    -- uuid4 hex
    owner_id                INTEGER NOT NULL,
    guild_id                INTEGER,                -- NULL in direct messages
    channel_id              INTEGER,
    kind                    TEXT    NOT NULL,
    params                  TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    status                  TEXT    NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts                INTEGER NOT NULL DEFAULT 0,   -- times the job entered 'running'
    created_at              TEXT    NOT NULL,
    started_at              TEXT,
    finished_at             TEXT,
    timings                 TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(timings)),
    error                   TEXT,
    result_paths            TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(result_paths)),
    interaction_token       TEXT,                   -- sensitive: stored for follow-ups, never logged
    application_id          INTEGER,
    interaction_created_at  TEXT,
    message_id              INTEGER                 -- the status message the bot edits
);

CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_active ON jobs (status, created_at) WHERE status IN ('queued', 'running');

CREATE TABLE cache_entries (
    key           TEXT    PRIMARY KEY,              -- sha256 hex of the canonical cache record
    kind          TEXT    NOT NULL,                 -- vl | text | ref_stats | ...
    path          TEXT    NOT NULL,                 -- file path relative to the cache root
    bytes         INTEGER NOT NULL CHECK (bytes >= 0),
    checksum      TEXT    NOT NULL,                 -- sha256 hex of the file's bytes
    meta          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
    created_at    REAL    NOT NULL,                 -- unix seconds
    last_used_at  REAL    NOT NULL,                 -- unix seconds; least recent is evicted first
    hits          INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX cache_entries_lru ON cache_entries (last_used_at, key);
