-- Users with password (argon2id PHC string) and TOTP (seed sealed with the
-- server's secret box, never in clear); directory groups; network settings;
-- device approval, node key expiry and posture.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    totp_sealed TEXT NOT NULL,
    totp_last_step BIGINT,
    disabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE user_groups (
    user_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    PRIMARY KEY (user_id, group_name)
);

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

ALTER TABLE devices ADD COLUMN approved BIGINT NOT NULL DEFAULT 1;
ALTER TABLE devices ADD COLUMN key_issued_at BIGINT NOT NULL DEFAULT 0;
-- NULL = the node key never expires (tagged devices only).
ALTER TABLE devices ADD COLUMN key_expires_at BIGINT;
-- Per-device lifetime in seconds: NULL = network default, -1 = never.
ALTER TABLE devices ADD COLUMN key_expiry_override BIGINT;
-- Last posture report (JSON) and when it came.
ALTER TABLE devices ADD COLUMN posture TEXT;
ALTER TABLE devices ADD COLUMN posture_at BIGINT;
-- Address the server observed the device's control connection from.
ALTER TABLE devices ADD COLUMN public_ip TEXT;

ALTER TABLE join_tokens ADD COLUMN pre_approved BIGINT NOT NULL DEFAULT 0;
