-- ztmesh initial schema. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Secrets are stored only as SHA-256 hashes (*_hash columns).

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    owner TEXT,
    cert_fingerprint TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    endpoint TEXT,
    created_at BIGINT NOT NULL,
    last_seen BIGINT
);

CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    reusable BIGINT NOT NULL,
    tags TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    uses BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE policies (
    version BIGINT PRIMARY KEY,
    text TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at);
