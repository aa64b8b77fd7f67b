-- Roles with expiry for admin API keys, and a fuller audit log.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. The triggers that
-- make audit_log append-only differ per backend (SQLite has no functions,
-- PostgreSQL no inline trigger bodies), so the server installs them after
-- the migrations (store/audit.rs, `protect_audit_log`).

-- Unix seconds; NULL = never expires / not revoked.
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN revoked_at BIGINT;
ALTER TABLE api_keys ADD COLUMN description TEXT NOT NULL DEFAULT '';
-- Actor that created the key (`apikey:ID`, `server`).
ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT '';

-- Role of the actor, peer address of the request, and the state before and
-- after the change (JSON text, '' when not applicable). `target` is the
-- object acted on; `detail` is kept for records written before this
-- migration and copied into after_state.
ALTER TABLE audit_log ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN before_state TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN after_state TEXT NOT NULL DEFAULT '';
UPDATE audit_log SET after_state = detail;

CREATE INDEX audit_log_actor ON audit_log (actor);
CREATE INDEX audit_log_action ON audit_log (action);
