-- 0002_style_codes
-- Revises: 0001_init
-- Creation Date: 2026-12-02
-- Reason: style codes (issue 15 point 2): every reference a user sends gets a short code, reusable with
--         /stylize style:<code>. One row per (scope, code, owner): two users who send the same image in one server
--         share its code, each with a row of their own that /style forget removes. Applied by bot/store/migrate.py.
--
-- scope is 'g<guild id>' for a code made in a server and 'u<user id>' for one made in a direct message; the code is
-- derived from the scope and the stored reference's hash (engine/styles.py), and looked up only inside its scope
-- (plus a user's own rows in direct messages), so a code never resolves to another server's image. The reference
-- itself stays a file (data_dir/references/<sha256>.png) under the retention policy; a row whose file expired is
-- kept so the user can be told so.

CREATE TABLE style_codes (
    scope             TEXT    NOT NULL,
    code              TEXT    NOT NULL CHECK (length(code) = 8),
    owner_id          INTEGER NOT NULL,
    guild_id          INTEGER,                      -- NULL for a code made in a direct message
    reference_sha256  TEXT    NOT NULL CHECK (length(reference_sha256) = 64),
    reference_path    TEXT    NOT NULL,
    width             INTEGER NOT NULL CHECK (width > 0),
    height            INTEGER NOT NULL CHECK (height > 0),
    created_at        TEXT    NOT NULL,
    last_used_at      TEXT    NOT NULL,
    uses              INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    PRIMARY KEY (scope, code, owner_id)
);

CREATE INDEX style_codes_owner ON style_codes (owner_id, last_used_at);
