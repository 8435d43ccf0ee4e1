//! SQL for the webhooks hookdock manages on GitHub and the redeliveries it requested.
//! Secrets arrive here already sealed; this module never sees a plaintext.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::keys::events_with_delivery_ids;
use super::sql::Sql;
use super::{Store, StoreError, now_ms, opt_text};
use crate::crypto::Sealed;

/// One managed webhook (`scope` is `repository` or `organization`; `name` is `owner/repo` or
/// the organization).
#[derive(Debug, Clone)]
pub struct HookRegistration {
    pub id: i64,
    pub scope: String,
    pub name: String,
    pub target_id: Option<i64>,
    pub hook_id: Option<i64>,
    pub url: String,
    pub events: Vec<String>,
    /// `pending`, `registered`, `failed`, `missing` or `disabled`.
    pub status: String,
    pub secret: Option<Sealed>,
    pub old_secret: Option<Sealed>,
    pub old_secret_until: Option<i64>,
    pub rotated_at: Option<i64>,
    pub checked_at: Option<i64>,
    pub swept_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_delivery: Option<LastDelivery>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The newest delivery GitHub reports for a hook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastDelivery {
    /// Unix milliseconds.
    #[serde(serialize_with = "super::ser_time")]
    pub at: i64,
    /// The HTTP status hookdock answered (0: GitHub could not connect).
    pub code: i64,
    pub status: String,
}

/// The newest event stored for a repository or organization.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastEvent {
    pub id: i64,
    pub event: String,
    pub action: Option<String>,
    #[serde(serialize_with = "super::ser_time")]
    pub received_at: i64,
}

/// A redelivery hookdock asked GitHub for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Redelivery {
    pub guid: String,
    pub event: String,
    #[serde(serialize_with = "super::ser_time")]
    pub requested_at: i64,
    pub attempts: i64,
}

/// What an install writes.
#[derive(Debug, Clone)]
pub struct RegistrationUpdate<'a> {
    pub scope: &'a str,
    pub name: &'a str,
    pub target_id: Option<i64>,
    pub hook_id: Option<i64>,
    pub url: &'a str,
    pub events: &'a [String],
    pub status: &'a str,
    pub secret: Option<&'a Sealed>,
    pub last_error: Option<&'a str>,
}

const COLUMNS: &str = "id, scope, name, target_id, hook_id, url, events, status, secret_key_id, \
     secret, old_secret_key_id, old_secret, old_secret_until, rotated_at, checked_at, swept_at, \
     last_error, last_delivery_at, last_delivery_code, last_delivery_status, created_at, \
     updated_at";

fn sealed(row: &AnyRow, key_col: &str, col: &str) -> Result<Option<Sealed>, StoreError> {
    let (Some(key_id), Some(text)) = (opt_text(row, key_col)?, opt_text(row, col)?) else {
        return Ok(None);
    };
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| StoreError::Corrupt(format!("hook_registrations.{col}: {e}")))?;
    Ok(Some(Sealed { key_id, bytes }))
}

fn registration(row: &AnyRow) -> Result<HookRegistration, StoreError> {
    let events: String = row.try_get("events")?;
    Ok(HookRegistration {
        id: row.try_get("id")?,
        scope: row.try_get("scope")?,
        name: row.try_get("name")?,
        target_id: row.try_get("target_id")?,
        hook_id: row.try_get("hook_id")?,
        url: row.try_get("url")?,
        events: serde_json::from_str(&events)
            .map_err(|e| StoreError::Corrupt(format!("hook_registrations.events: {e}")))?,
        status: row.try_get("status")?,
        secret: sealed(row, "secret_key_id", "secret")?,
        old_secret: sealed(row, "old_secret_key_id", "old_secret")?,
        old_secret_until: row.try_get("old_secret_until")?,
        rotated_at: row.try_get("rotated_at")?,
        checked_at: row.try_get("checked_at")?,
        swept_at: row.try_get("swept_at")?,
        last_error: opt_text(row, "last_error")?,
        last_delivery: match row.try_get::<Option<i64>, _>("last_delivery_at")? {
            Some(at) => Some(LastDelivery {
                at,
                code: row
                    .try_get::<Option<i64>, _>("last_delivery_code")?
                    .unwrap_or(0),
                status: opt_text(row, "last_delivery_status")?.unwrap_or_default(),
            }),
            None => None,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn bind_sealed(sql: &mut Sql, value: Option<&Sealed>) {
    sql.bind(value.map(|s| s.key_id.clone()));
    sql.push(", ");
    sql.bind(value.map(|s| STANDARD.encode(&s.bytes)));
}

impl Store {
    pub async fn hook_registrations(&self) -> Result<Vec<HookRegistration>, StoreError> {
        let sql = Sql::new(&format!(
            "SELECT {COLUMNS} FROM hook_registrations ORDER BY scope, name"
        ));
        sql.fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(registration)
            .collect()
    }

    pub async fn hook_registration(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<Option<HookRegistration>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {COLUMNS} FROM hook_registrations WHERE scope = "
        ));
        sql.bind(scope).push(" AND name = ").bind(name);
        sql.fetch_optional(self.inner.reads())
            .await?
            .as_ref()
            .map(registration)
            .transpose()
    }

    /// Inserts or updates the registration of `(scope, name)`; the previous secret, if any, is
    /// kept as it was.
    pub async fn save_hook_registration(
        &self,
        r: &RegistrationUpdate<'_>,
    ) -> Result<HookRegistration, StoreError> {
        let now = now_ms();
        let events = serde_json::to_string(r.events).unwrap_or_else(|_| "[]".into());
        let mut sql = Sql::new(
            "INSERT INTO hook_registrations (scope, name, target_id, hook_id, url, events, status, \
             secret_key_id, secret, last_error, checked_at, created_at, updated_at) VALUES (",
        );
        sql.bind(r.scope).push(", ").bind(r.name).push(", ");
        sql.bind(r.target_id).push(", ").bind(r.hook_id).push(", ");
        sql.bind(r.url).push(", ").bind(events).push(", ");
        sql.bind(r.status).push(", ");
        bind_sealed(&mut sql, r.secret);
        sql.push(", ").bind(r.last_error).push(", ").bind(now);
        sql.push(", ").bind(now).push(", ").bind(now);
        sql.push(
            ") ON CONFLICT (scope, name) DO UPDATE SET target_id = COALESCE(excluded.target_id, \
             hook_registrations.target_id), hook_id = excluded.hook_id, url = excluded.url, \
             events = excluded.events, status = excluded.status, \
             secret_key_id = COALESCE(excluded.secret_key_id, hook_registrations.secret_key_id), \
             secret = COALESCE(excluded.secret, hook_registrations.secret), \
             last_error = excluded.last_error, checked_at = excluded.checked_at, \
             updated_at = excluded.updated_at",
        );
        sql.push(&format!(" RETURNING {COLUMNS}"));
        let row = sql
            .fetch_optional(self.inner.writes())
            .await?
            .ok_or_else(|| StoreError::Corrupt("upsert returned no row".into()))?;
        // GitHub is given this secret next: it must survive a power cut.
        self.sync().await?;
        registration(&row)
    }

    /// Replaces the secret; the one it replaces stays valid until `old_until` (ms).
    pub async fn rotate_hook_secret(
        &self,
        id: i64,
        new: &Sealed,
        old: Option<&Sealed>,
        old_until: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut sql = Sql::new("UPDATE hook_registrations SET secret_key_id = ");
        sql.bind(new.key_id.clone()).push(", secret = ");
        sql.bind(STANDARD.encode(&new.bytes));
        sql.push(", old_secret_key_id = ")
            .bind(old.map(|o| o.key_id.clone()));
        sql.push(", old_secret = ")
            .bind(old.map(|o| STANDARD.encode(&o.bytes)));
        sql.push(", old_secret_until = ")
            .bind(old.map(|_| old_until));
        sql.push(", rotated_at = ").bind(now);
        sql.push(", updated_at = ").bind(now);
        sql.push(" WHERE id = ").bind(id);
        sql.execute(self.inner.writes()).await?;
        self.sync().await
    }

    /// Records the outcome of a check; `last_delivery` is kept when `None`.
    pub async fn set_hook_status(
        &self,
        id: i64,
        status: &str,
        last_error: Option<&str>,
        last_delivery: Option<&LastDelivery>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut sql = Sql::new("UPDATE hook_registrations SET status = ");
        sql.bind(status).push(", last_error = ").bind(last_error);
        if let Some(d) = last_delivery {
            sql.push(", last_delivery_at = ").bind(d.at);
            sql.push(", last_delivery_code = ").bind(d.code);
            sql.push(", last_delivery_status = ")
                .bind(d.status.as_str());
        }
        sql.push(", checked_at = ").bind(now);
        sql.push(", updated_at = ").bind(now);
        sql.push(" WHERE id = ").bind(id);
        sql.execute(self.inner.writes()).await?;
        Ok(())
    }

    pub async fn set_hook_swept(&self, id: i64, at: i64) -> Result<(), StoreError> {
        let mut sql = Sql::new("UPDATE hook_registrations SET swept_at = ");
        sql.bind(at).push(" WHERE id = ").bind(id);
        sql.execute(self.inner.writes()).await?;
        Ok(())
    }

    pub async fn delete_hook_registration(&self, id: i64) -> Result<(), StoreError> {
        let mut sql = Sql::new("DELETE FROM hook_registrations WHERE id = ");
        sql.bind(id);
        sql.execute(self.inner.writes()).await?;
        self.sync().await
    }

    /// Claims the right to ask GitHub to redeliver `guid`: true for a guid never asked for, or
    /// one whose last request is older than `failed_since` (GitHub tried again after it, and
    /// that attempt failed too) and that has been asked for fewer than `max_attempts` times.
    /// Claimed in one statement, so two instances sweeping at once ask only once.
    pub async fn claim_redelivery(
        &self,
        registration_id: i64,
        guid: &str,
        github_delivery_id: i64,
        event: &str,
        failed_since: i64,
        max_attempts: i64,
    ) -> Result<bool, StoreError> {
        let mut sql = Sql::new(
            "INSERT INTO redeliveries (registration_id, guid, github_delivery_id, event, requested_at, attempts) VALUES (",
        );
        sql.bind(registration_id).push(", ").bind(guid).push(", ");
        sql.bind(github_delivery_id).push(", ").bind(event);
        sql.push(", ").bind(now_ms()).push(", 1)");
        sql.push(
            " ON CONFLICT (registration_id, guid) DO UPDATE SET attempts = redeliveries.attempts + 1, \
             requested_at = excluded.requested_at, github_delivery_id = excluded.github_delivery_id \
             WHERE redeliveries.attempts < ",
        );
        sql.bind(max_attempts)
            .push(" AND redeliveries.requested_at < ")
            .bind(failed_since);
        Ok(sql.execute(self.inner.writes()).await?.rows_affected() == 1)
    }

    /// Every redelivery requested for a registration, oldest first.
    pub async fn redeliveries(&self, registration_id: i64) -> Result<Vec<Redelivery>, StoreError> {
        let mut sql = Sql::new(
            "SELECT guid, event, requested_at, attempts FROM redeliveries WHERE registration_id = ",
        );
        sql.bind(registration_id)
            .push(" ORDER BY requested_at, guid");
        sql.fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(Redelivery {
                    guid: r.try_get(0)?,
                    event: r.try_get(1)?,
                    requested_at: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// The newest stored event delivered by a hook.
    pub async fn last_event(&self, hook_id: i64) -> Result<Option<LastEvent>, StoreError> {
        let mut sql =
            Sql::new("SELECT id, event, action, received_at FROM events WHERE hook_id = ");
        sql.bind(hook_id).push(" ORDER BY id DESC LIMIT 1");
        let Some(row) = sql.fetch_optional(self.inner.reads()).await? else {
            return Ok(None);
        };
        Ok(Some(LastEvent {
            id: row.try_get(0)?,
            event: row.try_get(1)?,
            action: opt_text(&row, "action")?,
            received_at: row.try_get(3)?,
        }))
    }

    /// Which of these delivery ids are stored.
    pub async fn stored_delivery_ids(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in ids.chunks(200) {
            let mut sql = Sql::new("SELECT delivery_id FROM events WHERE ");
            events_with_delivery_ids(
                &mut sql,
                self.inner.dialect,
                chunk.iter().map(String::as_str),
            );
            for row in sql.fetch_all(self.inner.reads()).await? {
                found.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(found)
    }

    /// Reseals every stored secret with `reseal` (key rotation); returns how many changed.
    pub async fn reseal_hook_secrets(
        &self,
        mut reseal: impl FnMut(&HookRegistration, &Sealed, &str) -> Result<Option<Sealed>, String>,
    ) -> Result<usize, StoreError> {
        let mut changed = 0;
        for r in self.hook_registrations().await? {
            for (key_col, col, value) in [
                ("secret_key_id", "secret", r.secret.as_ref()),
                ("old_secret_key_id", "old_secret", r.old_secret.as_ref()),
            ] {
                let Some(value) = value else { continue };
                let Some(new) = reseal(&r, value, col).map_err(StoreError::Corrupt)? else {
                    continue;
                };
                let mut sql = Sql::new(&format!("UPDATE hook_registrations SET {key_col} = "));
                sql.bind(new.key_id.clone());
                sql.push(&format!(", {col} = "))
                    .bind(STANDARD.encode(&new.bytes));
                sql.push(" WHERE id = ").bind(r.id);
                sql.execute(self.inner.writes()).await?;
                changed += 1;
            }
        }
        // The old key is forgotten after this returns.
        self.sync().await?;
        Ok(changed)
    }
}
