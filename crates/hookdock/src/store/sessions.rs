//! SQL for signing in with GitHub: pending OAuth states and sessions. Callers pass hashes of
//! the state values and session ids, and tokens already sealed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use super::sql::Sql;
use super::{Store, StoreError, now_ms};
use crate::crypto::Sealed;

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id_hash: String,
    pub user_id: i64,
    pub login: String,
    pub token: Sealed,
    pub scopes: String,
    pub expires_at: i64,
}

impl Store {
    pub async fn put_oauth_state(&self, state_hash: &str) -> Result<(), StoreError> {
        let mut sql = Sql::new("INSERT INTO oauth_states (state_hash, created_at) VALUES (");
        sql.bind(state_hash).push(", ").bind(now_ms()).push(")");
        sql.execute(self.inner.writes()).await?;
        Ok(())
    }

    /// Consumes a state created at or after `not_before`; false when there is none (unknown,
    /// used already, or expired). Expired states are removed on the way.
    pub async fn take_oauth_state(
        &self,
        state_hash: &str,
        not_before: i64,
    ) -> Result<bool, StoreError> {
        let mut sql = Sql::new("DELETE FROM oauth_states WHERE state_hash = ");
        sql.bind(state_hash)
            .push(" AND created_at >= ")
            .bind(not_before);
        let taken = sql.execute(self.inner.writes()).await?.rows_affected() == 1;
        let mut purge = Sql::new("DELETE FROM oauth_states WHERE created_at < ");
        purge.bind(not_before);
        purge.execute(self.inner.writes()).await?;
        Ok(taken)
    }

    pub async fn create_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        let mut sql = Sql::new(
            "INSERT INTO sessions (id_hash, user_id, login, token_key_id, token, scopes, created_at, expires_at) VALUES (",
        );
        sql.bind(s.id_hash.as_str())
            .push(", ")
            .bind(s.user_id)
            .push(", ");
        sql.bind(s.login.as_str()).push(", ");
        sql.bind(s.token.key_id.as_str()).push(", ");
        sql.bind(STANDARD.encode(&s.token.bytes)).push(", ");
        sql.bind(s.scopes.as_str())
            .push(", ")
            .bind(now_ms())
            .push(", ");
        sql.bind(s.expires_at).push(")");
        sql.execute(self.inner.writes()).await?;
        Ok(())
    }

    /// The session with this id hash, unless it has expired by `now`.
    pub async fn session(&self, id_hash: &str, now: i64) -> Result<Option<SessionRow>, StoreError> {
        let mut sql = Sql::new(
            "SELECT id_hash, user_id, login, token_key_id, token, scopes, expires_at FROM sessions WHERE id_hash = ",
        );
        sql.bind(id_hash).push(" AND expires_at > ").bind(now);
        sql.fetch_optional(self.inner.reads())
            .await?
            .map(|row| session_row(&row))
            .transpose()
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let mut sql = Sql::new("DELETE FROM sessions WHERE id_hash = ");
        sql.bind(id_hash);
        Ok(sql.execute(self.inner.writes()).await?.rows_affected() == 1)
    }

    /// Removes sessions that expired before `now`.
    pub async fn purge_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let mut sql = Sql::new("DELETE FROM sessions WHERE expires_at <= ");
        sql.bind(now);
        Ok(sql.execute(self.inner.writes()).await?.rows_affected())
    }

    /// Reseals every session token with `reseal` (key rotation); returns how many changed.
    pub async fn reseal_session_tokens(
        &self,
        mut reseal: impl FnMut(&str, &Sealed) -> Result<Option<Sealed>, String>,
    ) -> Result<usize, StoreError> {
        let rows = Sql::new(
            "SELECT id_hash, user_id, login, token_key_id, token, scopes, expires_at FROM sessions",
        )
        .fetch_all(self.inner.reads())
        .await?;
        let mut changed = 0;
        for row in &rows {
            let s = session_row(row)?;
            let Some(new) = reseal(&s.id_hash, &s.token).map_err(StoreError::Corrupt)? else {
                continue;
            };
            let mut sql = Sql::new("UPDATE sessions SET token_key_id = ");
            sql.bind(new.key_id.as_str()).push(", token = ");
            sql.bind(STANDARD.encode(&new.bytes))
                .push(" WHERE id_hash = ")
                .bind(s.id_hash.as_str());
            sql.execute(self.inner.writes()).await?;
            changed += 1;
        }
        // The old key is forgotten after this returns.
        self.sync().await?;
        Ok(changed)
    }
}

fn session_row(row: &sqlx::any::AnyRow) -> Result<SessionRow, StoreError> {
    let token: String = row.try_get("token")?;
    Ok(SessionRow {
        id_hash: row.try_get("id_hash")?,
        user_id: row.try_get("user_id")?,
        login: row.try_get("login")?,
        token: Sealed {
            key_id: row.try_get("token_key_id")?,
            bytes: STANDARD
                .decode(token)
                .map_err(|e| StoreError::Corrupt(format!("sessions.token: {e}")))?,
        },
        scopes: row.try_get("scopes")?,
        expires_at: row.try_get("expires_at")?,
    })
}
