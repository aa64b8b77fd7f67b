//! Users and their directory groups, and the network settings.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use sqlx::Row;
use sqlx::any::AnyRow;

use serde_json::json;
use sqlx::{Any, Transaction};

use super::{Actor, Store, insert_audit};

/// A user as stored. The password is an argon2id PHC string and the TOTP
/// seed is sealed with the server's secret box: neither is ever in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Random id.
    pub id: String,
    /// Login name (unique), e.g. alice@example.com.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Sealed TOTP seed.
    pub totp_sealed: String,
    /// Last TOTP step used (replay protection).
    pub totp_last_step: Option<i64>,
    /// Disabled users cannot log in and their devices reach nobody.
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Directory groups, sorted.
    pub groups: Vec<String>,
}

/// Network-wide settings, with defaults for anything never set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// New devices wait for an admin's approval.
    pub device_approval: bool,
    /// Default node key lifetime, seconds.
    pub key_expiry_seconds: u64,
}

/// The default node key lifetime: 90 days.
pub const DEFAULT_KEY_EXPIRY_SECONDS: u64 = 90 * 24 * 3600;

impl Default for Settings {
    fn default() -> Self {
        Self {
            device_approval: false,
            key_expiry_seconds: DEFAULT_KEY_EXPIRY_SECONDS,
        }
    }
}

impl Store {
    /// Creates a user with its groups (audited, one transaction).
    pub async fn create_user(&self, user: &UserRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT id FROM users WHERE name = $1")
            .bind(&user.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(anyhow!("a user named `{}` already exists", user.name));
        }
        sqlx::query("INSERT INTO users (id, name, password_hash, totp_sealed, totp_last_step, disabled, created_at) VALUES ($1, $2, $3, $4, NULL, 0, $5)")
            .bind(&user.id)
            .bind(&user.name)
            .bind(&user.password_hash)
            .bind(&user.totp_sealed)
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
        for group in &user.groups {
            sqlx::query("INSERT INTO user_groups (user_id, group_name) VALUES ($1, $2)")
                .bind(&user.id)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        let after = user_state(&mut tx, &user.id).await?;
        insert_audit(&mut *tx, actor, "user.create", &user.name, "", &after).await?;
        self.commit_audited(tx).await
    }

    /// Every user with groups, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut groups = self.group_rows().await?;
        rows.iter()
            .map(|row| {
                let mut user = user_from_row(row)?;
                user.groups = groups.remove(&user.id).unwrap_or_default();
                Ok(user)
            })
            .collect()
    }

    /// One user by name.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut user = user_from_row(&row)?;
        user.groups = self
            .group_rows()
            .await?
            .remove(&user.id)
            .unwrap_or_default();
        Ok(Some(user))
    }

    /// Disables or enables a user (audited).
    pub async fn set_user_disabled(&self, id: &str, disabled: bool, actor: &Actor) -> Result<()> {
        let mut tx = self.write_tx().await?;
        lock_user(&mut tx, id).await?;
        let before = user_state(&mut tx, id).await?;
        sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let action = if disabled {
            "user.disable"
        } else {
            "user.enable"
        };
        let after = user_state(&mut tx, id).await?;
        insert_audit(&mut *tx, actor, action, id, &before, &after).await?;
        self.commit_audited(tx).await
    }

    /// Deletes a user: its devices are revoked, its groups and record go.
    /// Returns how many devices were revoked.
    pub async fn delete_user(&self, user: &UserRecord, actor: &Actor) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        lock_user(&mut tx, &user.id).await?;
        let before = user_state(&mut tx, &user.id).await?;
        let revoked = sqlx::query(
            "UPDATE devices SET status = 'revoked' WHERE owner = $1 AND status = 'active'",
        )
        .bind(&user.name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM user_groups WHERE user_id = $1")
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        let after = json!({ "deleted": true, "devices_revoked": revoked }).to_string();
        insert_audit(&mut *tx, actor, "user.delete", &user.name, &before, &after).await?;
        self.commit_audited(tx).await?;
        Ok(revoked)
    }

    /// Adds a user to a group or removes it (audited).
    pub async fn set_group_member(
        &self,
        user_id: &str,
        group: &str,
        member: bool,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        lock_user(&mut tx, user_id).await?;
        let before = user_state(&mut tx, user_id).await?;
        sqlx::query("DELETE FROM user_groups WHERE user_id = $1 AND group_name = $2")
            .bind(user_id)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        if member {
            sqlx::query("INSERT INTO user_groups (user_id, group_name) VALUES ($1, $2)")
                .bind(user_id)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        let action = if member { "group.add" } else { "group.remove" };
        let after = user_state(&mut tx, user_id).await?;
        insert_audit(&mut *tx, actor, action, group, &before, &after).await?;
        self.commit_audited(tx).await
    }

    /// user id -> sorted groups.
    async fn group_rows(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let rows = sqlx::query("SELECT user_id, group_name FROM user_groups ORDER BY group_name")
            .fetch_all(&self.pool)
            .await?;
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            groups
                .entry(row.try_get("user_id")?)
                .or_default()
                .push(row.try_get("group_name")?);
        }
        Ok(groups)
    }

    /// The network settings.
    pub async fn settings(&self) -> Result<Settings> {
        let rows = sqlx::query("SELECT name, value FROM settings")
            .fetch_all(&self.pool)
            .await?;
        settings_from_rows(&rows)
    }

    /// Writes the settings (audited).
    pub async fn set_settings(&self, settings: &Settings, actor: &Actor) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // Write first (see `lock_user`).
        sqlx::query("UPDATE settings SET value = value")
            .execute(&mut *tx)
            .await?;
        let before = settings_json(&settings_from_rows(
            &sqlx::query("SELECT name, value FROM settings")
                .fetch_all(&mut *tx)
                .await?,
        )?);
        for (name, value) in [
            ("device_approval", settings.device_approval.to_string()),
            (
                "key_expiry_seconds",
                settings.key_expiry_seconds.to_string(),
            ),
        ] {
            sqlx::query("DELETE FROM settings WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
                .bind(name)
                .bind(&value)
                .execute(&mut *tx)
                .await?;
        }
        let after = settings_json(settings);
        insert_audit(
            &mut *tx,
            actor,
            "settings.update",
            "network",
            &before,
            &after,
        )
        .await?;
        self.commit_audited(tx).await
    }
}

/// Settings from their rows, with defaults for anything never set.
fn settings_from_rows(rows: &[AnyRow]) -> Result<Settings> {
    let mut settings = Settings::default();
    for row in rows {
        let name: String = row.try_get("name")?;
        let value: String = row.try_get("value")?;
        match name.as_str() {
            "device_approval" => settings.device_approval = value == "true",
            "key_expiry_seconds" => {
                settings.key_expiry_seconds = value
                    .parse()
                    .map_err(|_| anyhow!("stored setting key_expiry_seconds `{value}`"))?;
            }
            _ => {}
        }
    }
    Ok(settings)
}

fn settings_json(settings: &Settings) -> String {
    json!({
        "device_approval": settings.device_approval,
        "key_expiry_seconds": settings.key_expiry_seconds,
    })
    .to_string()
}

/// Takes the write lock (SQLite) or the row lock (PostgreSQL) before
/// reading the state to audit: a read-then-write transaction fails at once
/// with "database is locked" on SQLite while another connection writes.
async fn lock_user(tx: &mut Transaction<'_, Any>, id: &str) -> Result<()> {
    sqlx::query("UPDATE users SET disabled = disabled WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The audited state of a user: never its password hash or TOTP seed.
async fn user_state(tx: &mut Transaction<'_, Any>, id: &str) -> Result<String> {
    let Some(row) = sqlx::query("SELECT name, disabled FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(String::new());
    };
    let groups: Vec<String> =
        sqlx::query("SELECT group_name FROM user_groups WHERE user_id = $1 ORDER BY group_name")
            .bind(id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get("group_name"))
            .collect::<Result<_, _>>()?;
    Ok(json!({
        "name": row.try_get::<String, _>("name")?,
        "disabled": row.try_get::<i64, _>("disabled")? != 0,
        "groups": groups,
    })
    .to_string())
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        totp_sealed: row.try_get("totp_sealed")?,
        totp_last_step: row.try_get("totp_last_step")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get("created_at")?,
        groups: Vec::new(),
    })
}
