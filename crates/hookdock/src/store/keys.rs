//! The keys behind deduplication and the replay guard: which delivery ids are stored (and as
//! which event), and which body hashes were seen.
//!
//! On PostgreSQL they are the `events` table itself: its unique constraint on `delivery_id`
//! decides between instances inserting at the same moment, and an index finds body hashes.
//!
//! On SQLite one writer at a time holds the database's write lock, and the two random-key
//! indexes were most of what a delivery wrote: a GUID or a hash lands on a different B-tree leaf
//! each time, so each delivery dirtied two leaf pages of its own, written to the log and then
//! again by the checkpoint (measured in BENCHMARKS.md). So SQLite keeps the keys in two tables
//! that are filled in key order, many keys at once: `delivery_keys` (the unique constraint on
//! delivery ids) and `body_keys`. They cover every event up to the watermark
//! `delivery_key_state.merged_through`. The events after it, the tail (at most a few seconds
//! of deliveries), are known to the group-commit writer from memory: [`DeliveryKeys`] is a
//! cache of `SELECT id, delivery_id, body_sha256 FROM events WHERE id > merged_through`,
//! checked at the start of every transaction that inserts deliveries or merges (against the
//! `events` sequence, the watermark and a count of deleted events) and read again whenever
//! anything else changed the events: another process inserting, a purge, a rolled-back
//! transaction. Since the check and the insert run under the write lock, a delivery id is
//! stored once, as with a constraint. The tail is merged into the key tables in sorted slices
//! inside the writer's transactions; the watermark moves with the last slice. Readers (the
//! API, the hook sweep) ask SQL: the key tables, plus the tail rows (see
//! [`events_with_delivery_ids`]). Deleting an event deletes its keys and counts the deletion
//! (a trigger).
//!
//! Most deliveries are new: their id and body are in none of the tables. So the writer also
//! keeps a Bloom filter of the merged keys ([`MergedFilter`]), and reads the tables only for
//! the keys it cannot rule out (about 1 in 100): the lookups were a tenth of the writer's time
//! (BENCHMARKS.md).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fastbloom::BloomFilter;

use super::Dialect;
use super::sql::{Arg, Column, Sql, WriteConn, padded_chunks};

/// When the tail is merged, and how much at a time.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The tail is frozen for merging once it holds this many deliveries...
    freeze_at: usize,
    /// ...or once its oldest delivery has waited this long, so that it stays short when
    /// deliveries are few.
    freeze_after: Duration,
    /// Keys of each kind merged per transaction: few enough not to hold up a batch of
    /// deliveries noticeably, enough to finish a frozen tail well before the next is due.
    slice: usize,
}

const LIMITS: Limits = Limits {
    freeze_at: 4096,
    freeze_after: Duration::from_secs(2),
    slice: 128,
};
/// Most values in one lookup's `IN` list.
const LOOKUP_CHUNK: usize = 256;

/// Keys a merged-key filter is first sized for (about 1.2 MB): most installations never outgrow
/// it, so never rebuild it after start-up.
const FILTER_MIN_KEYS: usize = 1 << 20;
/// Share of new keys the filter lets through to the tables although they are not there.
const FILTER_FALSE_POSITIVES: f64 = 0.01;
/// Rows read per statement while the filter is built from the tables.
const FILTER_LOAD_CHUNK: i64 = 10_000;

/// What an `INSERT INTO events` adds so that a delivery id stored meanwhile is skipped: on
/// PostgreSQL the unique constraint decides (another instance may insert the same id at the
/// same moment); on SQLite there is none, the writer's keys decided before the insert.
pub(crate) fn delivery_conflict_clause(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => " ON CONFLICT (delivery_id) DO NOTHING",
        Dialect::Sqlite => "",
    }
}

/// Appends `id IN (…events whose delivery id is one of ids…)` to a query on `events`.
pub(crate) fn events_with_delivery_ids<'a>(
    sql: &mut Sql<'a>,
    dialect: Dialect,
    ids: impl IntoIterator<Item = &'a str> + Clone,
) {
    match dialect {
        Dialect::Postgres => {
            sql.push("delivery_id IN ").bind_list(ids);
        }
        Dialect::Sqlite => {
            sql.push("id IN (SELECT event_id FROM delivery_keys WHERE delivery_id IN ")
                .bind_list(ids.clone())
                .push(
                    " UNION ALL SELECT id FROM events WHERE id > \
                     (SELECT merged_through FROM delivery_key_state) AND delivery_id IN ",
                )
                .bind_list(ids)
                .push(")");
        }
    }
}

/// What the group-commit writer knows of stored delivery ids and bodies (see the module docs).
/// On PostgreSQL it holds nothing and asks the `events` table.
pub(crate) struct DeliveryKeys {
    dialect: Dialect,
    limits: Limits,
    /// SQLite: the tail, when it is known to match the database.
    tail: Option<Tail>,
    /// SQLite: the merged keys, as a filter, once built.
    merged: Option<MergedFilter>,
}

/// Every key in `delivery_keys` and `body_keys`, and perhaps some that were deleted since or
/// whose merge did not commit: a key it does not contain is in neither table.
struct MergedFilter {
    filter: BloomFilter,
    /// Keys it was sized for; past them it is built again from the tables.
    capacity: usize,
    /// Keys in it.
    len: usize,
    /// The watermark as of its last key: if the database's differs, someone else merged.
    merged_through: i64,
}

impl MergedFilter {
    fn with_capacity(live: usize, merged_through: i64) -> MergedFilter {
        let capacity = live.saturating_mul(3).max(FILTER_MIN_KEYS);
        MergedFilter {
            filter: BloomFilter::with_false_pos(FILTER_FALSE_POSITIVES).expected_items(capacity),
            capacity,
            len: 0,
            merged_through,
        }
    }

    fn insert_delivery(&mut self, id: &str) {
        self.filter.insert(id);
        self.len += 1;
    }

    /// Body hashes are uniform already: their first bytes are the filter's hash.
    fn insert_body(&mut self, body: &[u8; 32]) {
        self.filter.insert_hash(body_hash(body));
        self.len += 1;
    }

    fn may_have_delivery(&self, id: &str) -> bool {
        self.filter.contains(id)
    }

    fn may_have_body(&self, body: &[u8; 32]) -> bool {
        self.filter.contains_hash(body_hash(body))
    }
}

fn body_hash(body: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&body[..8]);
    u64::from_le_bytes(first)
}

/// Events after the watermark, as the writer last saw them.
struct Tail {
    /// The `events` sequence (largest id ever given) this cache reflects: anything else that
    /// inserts an event moves it.
    seq: i64,
    /// `delivery_key_state.merged_through`.
    merged_through: i64,
    /// `delivery_key_state.deletions`: events deleted so far.
    deletions: i64,
    /// Events not frozen yet.
    active: Generation,
    /// Events being merged, the oldest part of the tail.
    frozen: Option<Frozen>,
}

#[derive(Default)]
struct Generation {
    deliveries: HashMap<String, i64>,
    /// One event per body: enough to know it was seen.
    bodies: HashMap<[u8; 32], i64>,
    /// Further events with a body already in `bodies` (held as replays): `body_keys` keeps
    /// every event's body, so that purging one of them leaves the others known.
    repeated_bodies: Vec<([u8; 32], i64)>,
    /// When its first event was recorded.
    since: Option<Instant>,
}

impl Generation {
    fn len(&self) -> usize {
        self.deliveries.len()
    }

    fn record(&mut self, delivery_id: &str, body: &[u8; 32], event_id: i64) {
        self.deliveries.insert(delivery_id.to_owned(), event_id);
        if self.bodies.contains_key(body) {
            self.repeated_bodies.push((*body, event_id));
        } else {
            self.bodies.insert(*body, event_id);
        }
        self.since.get_or_insert_with(Instant::now);
    }
}

/// A generation sorted by key for merging, with how far the merge got.
struct Frozen {
    /// Its largest event id: the watermark once it is merged.
    through: i64,
    deliveries: Vec<(String, i64)>,
    bodies: Vec<([u8; 32], i64)>,
    next_delivery: usize,
    next_body: usize,
}

impl Frozen {
    fn new(generation: Generation, through: i64) -> Frozen {
        let mut deliveries: Vec<(String, i64)> = generation.deliveries.into_iter().collect();
        deliveries.sort_unstable();
        let mut bodies: Vec<([u8; 32], i64)> = generation
            .bodies
            .into_iter()
            .chain(generation.repeated_bodies)
            .collect();
        bodies.sort_unstable();
        Frozen {
            through,
            deliveries,
            bodies,
            next_delivery: 0,
            next_body: 0,
        }
    }

    fn delivery(&self, id: &str) -> Option<i64> {
        self.deliveries
            .binary_search_by(|(key, _)| key.as_str().cmp(id))
            .ok()
            .map(|i| self.deliveries[i].1)
    }

    fn has_body(&self, body: &[u8; 32]) -> bool {
        self.bodies
            .binary_search_by(|(key, _)| key.cmp(body))
            .is_ok()
    }
}

impl DeliveryKeys {
    pub(crate) fn new(dialect: Dialect) -> DeliveryKeys {
        DeliveryKeys {
            dialect,
            limits: LIMITS,
            tail: None,
            merged: None,
        }
    }

    /// Forgets the tail; the next transaction reads it again. Called when a transaction that
    /// may have changed it did not commit.
    pub(crate) fn invalidate(&mut self) {
        self.tail = None;
    }

    /// Makes sure the cached tail is the database's (SQLite; nothing on PostgreSQL). Call at
    /// the start of a write transaction, before any other use in it.
    pub(crate) async fn sync(&mut self, conn: &mut impl WriteConn) -> Result<(), sqlx::Error> {
        if self.dialect != Dialect::Sqlite {
            return Ok(());
        }
        let sql = Sql::with(
            self.dialect,
            "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'events'), merged_through, \
             deletions FROM delivery_key_state",
        );
        let row = conn.row(&sql).await?.ok_or_else(|| {
            sqlx::Error::Protocol(
                "delivery_key_state is empty; the database was not migrated by hookdock".into(),
            )
        })?;
        let seq: i64 = row.try_get::<Option<i64>, _>(0)?.unwrap_or(0);
        let merged_through: i64 = row.try_get(1)?;
        let deletions: i64 = row.try_get(2)?;
        if self.tail.as_ref().is_some_and(|t| {
            t.seq == seq && t.merged_through == merged_through && t.deletions == deletions
        }) {
            return Ok(());
        }
        let mut sql = Sql::with(
            self.dialect,
            "SELECT id, delivery_id, body_sha256 FROM events WHERE id > ",
        );
        sql.bind(merged_through).push(" ORDER BY id");
        let mut active = Generation::default();
        for row in conn.rows(&sql).await? {
            let body: Vec<u8> = row.try_get(2)?;
            let body: [u8; 32] = body.as_slice().try_into().map_err(|_| {
                sqlx::Error::Protocol(format!("stored body hash of {} bytes", body.len()))
            })?;
            let delivery_id: String = row.try_get(1)?;
            active.record(&delivery_id, &body, row.try_get(0)?);
        }
        self.tail = Some(Tail {
            seq,
            merged_through,
            deletions,
            active,
            frozen: None,
        });
        let current = self
            .merged
            .as_ref()
            .is_some_and(|m| m.merged_through == merged_through && m.len <= m.capacity);
        if !current {
            self.merged = Some(load_filter(conn, self.dialect, merged_through).await?);
        }
        Ok(())
    }

    fn tail_and_filter(&mut self) -> Result<(&mut Tail, &mut MergedFilter), sqlx::Error> {
        match (self.tail.as_mut(), self.merged.as_mut()) {
            (Some(tail), Some(merged)) => Ok((tail, merged)),
            _ => Err(sqlx::Error::Protocol(
                "delivery keys used before sync".into(),
            )),
        }
    }

    /// Which of `ids` are stored, and as which event.
    pub(crate) async fn stored<'a>(
        &mut self,
        conn: &mut impl WriteConn,
        ids: &[&'a str],
    ) -> Result<HashMap<&'a str, i64>, sqlx::Error> {
        let mut found = HashMap::new();
        let mut ask: Vec<&'a str> = Vec::new();
        match self.dialect {
            Dialect::Sqlite => {
                let (tail, merged) = self.tail_and_filter()?;
                for &id in ids {
                    let known = tail
                        .active
                        .deliveries
                        .get(id)
                        .copied()
                        .or_else(|| tail.frozen.as_ref().and_then(|f| f.delivery(id)));
                    match known {
                        Some(event_id) => {
                            found.insert(id, event_id);
                        }
                        None if merged.may_have_delivery(id) => ask.push(id),
                        None => {}
                    }
                }
            }
            Dialect::Postgres => ask.extend_from_slice(ids),
        }
        let (table, event_id) = self.delivery_table();
        for chunk in ask.chunks(LOOKUP_CHUNK) {
            let mut sql = Sql::with(
                self.dialect,
                &format!("SELECT delivery_id, {event_id} FROM {table} WHERE delivery_id IN "),
            );
            sql.bind_list(chunk.iter().copied());
            let asked: HashSet<&'a str> = chunk.iter().copied().collect();
            for row in conn.rows(&sql).await? {
                let id: String = row.try_get(0)?;
                if let Some(&asked) = asked.get(id.as_str()) {
                    found.insert(asked, row.try_get(1)?);
                }
            }
        }
        Ok(found)
    }

    /// Which of `bodies` were seen before (a stored event has the same hash).
    pub(crate) async fn seen_bodies(
        &mut self,
        conn: &mut impl WriteConn,
        bodies: &[[u8; 32]],
    ) -> Result<HashSet<[u8; 32]>, sqlx::Error> {
        let mut seen = HashSet::new();
        let mut ask: Vec<[u8; 32]> = Vec::new();
        match self.dialect {
            Dialect::Sqlite => {
                let (tail, merged) = self.tail_and_filter()?;
                for body in bodies {
                    let known = tail.active.bodies.contains_key(body)
                        || tail.frozen.as_ref().is_some_and(|f| f.has_body(body));
                    if known {
                        seen.insert(*body);
                    } else if merged.may_have_body(body) {
                        ask.push(*body);
                    }
                }
            }
            Dialect::Postgres => ask.extend_from_slice(bodies),
        }
        let table = self.body_table();
        for chunk in ask.chunks(LOOKUP_CHUNK) {
            let mut sql = Sql::with(
                self.dialect,
                &format!("SELECT body_sha256 FROM {table} WHERE body_sha256 IN "),
            );
            sql.bind_list(chunk.iter().map(|b| &b[..]));
            for row in conn.rows(&sql).await? {
                let body: Vec<u8> = row.try_get(0)?;
                if let Ok(body) = <[u8; 32]>::try_from(body.as_slice()) {
                    seen.insert(body);
                }
            }
        }
        Ok(seen)
    }

    /// Notes an event inserted by this transaction.
    pub(crate) fn record(&mut self, delivery_id: &str, body: &[u8; 32], event_id: i64) {
        if let Some(tail) = self.tail.as_mut() {
            tail.active.record(delivery_id, body, event_id);
            tail.seq = tail.seq.max(event_id);
        }
    }

    /// Whether merging has work to do now (freezing a due tail, or a frozen one to finish).
    pub(crate) fn merge_due(&self) -> bool {
        let limits = self.limits;
        self.tail.as_ref().is_some_and(|t| {
            t.frozen.is_some()
                || t.active.len() >= limits.freeze_at
                || t.active
                    .since
                    .is_some_and(|since| since.elapsed() >= limits.freeze_after)
        })
    }

    /// Merges one slice of the frozen tail into the key tables, freezing the tail first when it
    /// is due. The last slice moves the watermark. Runs in the caller's write transaction,
    /// after [`DeliveryKeys::sync`].
    pub(crate) async fn merge_step(
        &mut self,
        conn: &mut impl WriteConn,
    ) -> Result<(), sqlx::Error> {
        if self.dialect != Dialect::Sqlite || !self.merge_due() {
            return Ok(());
        }
        let (dialect, per_step) = (self.dialect, self.limits.slice);
        let (tail, merged) = self.tail_and_filter()?;
        if tail.frozen.is_none() {
            let generation = std::mem::take(&mut tail.active);
            tail.frozen = Some(Frozen::new(generation, tail.seq));
        }
        let Some(frozen) = tail.frozen.as_mut() else {
            return Ok(());
        };
        let end = (frozen.next_delivery + per_step).min(frozen.deliveries.len());
        let slice = &frozen.deliveries[frozen.next_delivery..end];
        for (id, _) in slice {
            merged.insert_delivery(id);
        }
        let rows = slice
            .iter()
            .map(|(id, event)| (Arg::from(id.as_str()), *event));
        insert_keys(conn, dialect, "delivery_keys (delivery_id", rows.collect()).await?;
        frozen.next_delivery = end;
        let end = (frozen.next_body + per_step).min(frozen.bodies.len());
        let slice = &frozen.bodies[frozen.next_body..end];
        for (body, _) in slice {
            merged.insert_body(body);
        }
        let rows = slice
            .iter()
            .map(|(body, event)| (Arg::from(&body[..]), *event));
        insert_keys(conn, dialect, "body_keys (body_sha256", rows.collect()).await?;
        frozen.next_body = end;
        if frozen.next_delivery == frozen.deliveries.len()
            && frozen.next_body == frozen.bodies.len()
        {
            let through = frozen.through;
            let mut sql = Sql::with(dialect, "UPDATE delivery_key_state SET merged_through = ");
            sql.bind(through);
            conn.exec(&sql).await?;
            tail.merged_through = through;
            merged.merged_through = through;
            tail.frozen = None;
        }
        Ok(())
    }

    /// Where stored delivery ids are looked up: (table, its event id column).
    fn delivery_table(&self) -> (&'static str, &'static str) {
        match self.dialect {
            Dialect::Sqlite => ("delivery_keys", "event_id"),
            Dialect::Postgres => ("events", "id"),
        }
    }

    /// Where seen body hashes are looked up.
    fn body_table(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "body_keys",
            Dialect::Postgres => "events",
        }
    }
}

/// Inserts `(key, event id)` rows, in key order, into `table_and_key` (`table (key_column`),
/// skipping those already there (a merge that did not commit is merged again).
async fn insert_keys<'a>(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    table_and_key: &str,
    rows: Vec<(Arg<'a>, i64)>,
) -> Result<(), sqlx::Error> {
    let len = rows.len();
    let mut rows = rows.into_iter();
    for (_, count, _) in padded_chunks(dialect, len, LOOKUP_CHUNK) {
        let mut sql = Sql::with(
            dialect,
            &format!("INSERT OR IGNORE INTO {table_and_key}, event_id) VALUES "),
        );
        for (n, (key, event_id)) in rows.by_ref().take(count).enumerate() {
            sql.push(if n == 0 { "(" } else { ", (" })
                .bind(key)
                .push(", ")
                .bind(event_id)
                .push(")");
        }
        conn.exec(&sql).await?;
    }
    Ok(())
}

/// The next keys of one column of a key table after `after`, in key order (as text or bytes,
/// the column's own type: SQLite orders every blob after every text).
async fn keys_after<T>(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    table_and_column: (&str, &str),
    after: Option<&T>,
) -> Result<Vec<T>, sqlx::Error>
where
    T: Column + Clone + Into<Arg<'static>>,
{
    let (table, column) = table_and_column;
    let mut sql = Sql::with(dialect, &format!("SELECT DISTINCT {column} FROM {table}"));
    if let Some(last) = after {
        sql.push(&format!(" WHERE {column} > ")).bind(last.clone());
    }
    sql.push(&format!(" ORDER BY {column} LIMIT "))
        .bind(FILTER_LOAD_CHUNK);
    conn.rows(&sql)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect()
}

/// A filter of every key in the tables, read in key order a chunk at a time.
async fn load_filter(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    merged_through: i64,
) -> Result<MergedFilter, sqlx::Error> {
    let mut live: i64 = 0;
    for table in ["delivery_keys", "body_keys"] {
        let sql = Sql::with(dialect, &format!("SELECT COUNT(*) FROM {table}"));
        live += conn
            .row(&sql)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0);
    }
    let mut merged =
        MergedFilter::with_capacity(usize::try_from(live).unwrap_or(0), merged_through);
    let mut ids: Vec<String> = Vec::new();
    loop {
        ids = keys_after(conn, dialect, ("delivery_keys", "delivery_id"), ids.last()).await?;
        for id in &ids {
            merged.insert_delivery(id);
        }
        if ids.len() < FILTER_LOAD_CHUNK as usize {
            break;
        }
    }
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    loop {
        bodies = keys_after(conn, dialect, ("body_keys", "body_sha256"), bodies.last()).await?;
        for body in &bodies {
            if let Ok(hash) = <[u8; 32]>::try_from(body.as_slice()) {
                merged.insert_body(&hash);
            }
        }
        if bodies.len() < FILTER_LOAD_CHUNK as usize {
            break;
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row};

    use super::*;
    use crate::store::events::insert_deliveries;
    use crate::store::events::tests::{delivery, sqlite_store};
    use crate::store::{EventFilter, EventStatus, IngestOutcome, NewDelivery, Store};

    /// Merges after four deliveries, three keys of each kind per transaction.
    fn small_keys() -> DeliveryKeys {
        DeliveryKeys {
            limits: Limits {
                freeze_at: 4,
                freeze_after: Duration::from_secs(3600),
                slice: 3,
            },
            ..DeliveryKeys::new(Dialect::Sqlite)
        }
    }

    /// One write transaction on the store's write connection, as the writer runs them: the
    /// deliveries, then a merge slice when one is due.
    async fn write(
        store: &Store,
        keys: &mut DeliveryKeys,
        batch: &[NewDelivery],
    ) -> Vec<IngestOutcome> {
        let mut conn = store.inner.write.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let refs: Vec<&NewDelivery> = batch.iter().collect();
        let out = insert_deliveries(&mut *tx, Dialect::Sqlite, keys, &refs, 2)
            .await
            .unwrap();
        keys.merge_step(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        out
    }

    async fn count(store: &Store, query: &'static str) -> i64 {
        sqlx::query(query)
            .fetch_one(&store.inner.read)
            .await
            .unwrap()
            .get(0)
    }

    fn stored_id(outcome: IngestOutcome) -> i64 {
        match outcome {
            IngestOutcome::Stored { event_id, .. } => event_id,
            other => panic!("expected a stored delivery, got {other:?}"),
        }
    }

    fn statuses(outcomes: &[IngestOutcome]) -> Vec<Option<EventStatus>> {
        outcomes
            .iter()
            .map(|o| match o {
                IngestOutcome::Stored { status, .. } => Some(*status),
                IngestOutcome::Duplicate { .. } => None,
            })
            .collect()
    }

    /// Ids and bodies are recognised wherever their keys are: in the table (merged), in the
    /// frozen part being merged, or in the newest part of the tail; and by a writer that has
    /// just started (it reads the tail from the database).
    #[tokio::test]
    async fn merged_frozen_and_recent_keys_all_deduplicate_and_catch_replays() {
        let (store, dir) = sqlite_store("hookdock-keys-merge").await;
        let h = || vec!["activity"];
        let mut keys = small_keys();
        let first: Vec<NewDelivery> = (0..5).map(|i| delivery(&format!("d{i}"), i, h())).collect();
        let ids: Vec<i64> = write(&store, &mut keys, &first)
            .await
            .into_iter()
            .map(stored_id)
            .collect();
        // Five in the tail: frozen, three keys of each kind merged, the watermark not moved.
        assert_eq!(count(&store, "SELECT COUNT(*) FROM delivery_keys").await, 3);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM body_keys").await, 3);
        assert_eq!(
            count(&store, "SELECT merged_through FROM delivery_key_state").await,
            0
        );
        // Recognised in the table (d0..d2 sort first), in the frozen rest, and in the batch
        // itself; the next transaction finishes the merge.
        let out = write(
            &store,
            &mut keys,
            &[
                delivery("d0", 9, h()),
                delivery("d4", 9, h()),
                delivery("r1", 1, h()),
                delivery("r4", 4, h()),
                delivery("n5", 5, h()),
                delivery("n6", 5, h()),
            ],
        )
        .await;
        assert_eq!(out[0], IngestOutcome::Duplicate { event_id: ids[0] });
        assert_eq!(out[1], IngestOutcome::Duplicate { event_id: ids[4] });
        assert_eq!(
            statuses(&out[2..]),
            [
                Some(EventStatus::ReplaySuspected),
                Some(EventStatus::ReplaySuspected),
                Some(EventStatus::Pending),
                Some(EventStatus::ReplaySuspected)
            ]
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM delivery_keys").await, 5);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM body_keys").await, 5);
        assert_eq!(
            count(&store, "SELECT merged_through FROM delivery_key_state").await,
            ids[4]
        );

        // A writer that starts now reads the unmerged tail (r1, r4, n5, n6) from the events.
        for (mut keys, new) in [
            (small_keys(), ["x1", "x2"]),
            (DeliveryKeys::new(Dialect::Sqlite), ["y1", "y2"]),
        ] {
            let again = write(
                &store,
                &mut keys,
                &[
                    delivery("d1", 7, h()),
                    delivery("n6", 7, h()),
                    delivery(new[0], 4, h()),
                    delivery(new[1], 5, h()),
                ],
            )
            .await;
            assert_eq!(again[0], IngestOutcome::Duplicate { event_id: ids[1] });
            assert!(matches!(again[1], IngestOutcome::Duplicate { .. }));
            assert_eq!(
                statuses(&again[2..]),
                [
                    Some(EventStatus::ReplaySuspected),
                    Some(EventStatus::ReplaySuspected)
                ]
            );
        }
        let stored = count(&store, "SELECT COUNT(*) FROM events").await;
        assert_eq!(stored, 5 + 4 + 2 + 2);
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// The cache is checked against the database at each transaction: an event inserted by
    /// another writer, and one rolled back, are both seen for what they are.
    #[tokio::test]
    async fn inserts_by_another_writer_and_rollbacks_are_noticed() {
        let (store, dir) = sqlite_store("hookdock-keys-sync").await;
        let mut ours = small_keys();
        let mut theirs = small_keys();
        stored_id(write(&store, &mut ours, &[delivery("a", 1, vec![])]).await[0]);
        let b = stored_id(write(&store, &mut theirs, &[delivery("b", 2, vec![])]).await[0]);
        let out = write(
            &store,
            &mut ours,
            &[delivery("b", 3, vec![]), delivery("c", 2, vec![])],
        )
        .await;
        assert_eq!(out[0], IngestOutcome::Duplicate { event_id: b });
        assert_eq!(statuses(&out[1..]), [Some(EventStatus::ReplaySuspected)]);

        // The other writer merges what it knows (all seven): this writer's filter of merged
        // keys is built again, so their keys are found in the tables.
        let batch: Vec<NewDelivery> = (4..8)
            .map(|i| delivery(&format!("t{i}"), i, vec![]))
            .collect();
        write(&store, &mut theirs, &batch).await;
        while theirs.merge_due() {
            write(&store, &mut theirs, &[]).await;
        }
        assert_eq!(count(&store, "SELECT COUNT(*) FROM delivery_keys").await, 7);
        let out = write(
            &store,
            &mut ours,
            &[delivery("t5", 9, vec![]), delivery("u", 6, vec![])],
        )
        .await;
        assert!(matches!(out[0], IngestOutcome::Duplicate { .. }), "{out:?}");
        assert_eq!(statuses(&out[1..]), [Some(EventStatus::ReplaySuspected)]);

        // Rolled back: not stored, so neither a duplicate nor a known body afterwards.
        {
            let mut conn = store.inner.write.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            let d = delivery("gone", 8, vec![]);
            insert_deliveries(&mut *tx, Dialect::Sqlite, &mut ours, &[&d], 2)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }
        let out = write(&store, &mut ours, &[delivery("gone", 8, vec![])]).await;
        assert_eq!(statuses(&out), [Some(EventStatus::Ignored)]);
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// Readers find merged and unmerged delivery ids alike. A purge takes the keys of the
    /// events it deletes, merged or not, and the writer forgets them: a purged delivery id can
    /// be stored again, and no key of a purged event is merged later.
    #[tokio::test]
    async fn readers_and_purges_follow_the_keys() {
        let (store, dir) = sqlite_store("hookdock-keys-purge").await;
        let mut keys = small_keys();
        let batch: Vec<NewDelivery> = (0..5)
            .map(|i| delivery(&format!("p{i}"), i, vec![]))
            .collect();
        write(&store, &mut keys, &batch).await;
        // p0..p2 merged, p3 and p4 frozen; q new.
        write(&store, &mut keys, &[delivery("q", 9, vec!["activity"])]).await;
        let ids: Vec<String> = ["p0", "p4", "q", "none"].map(String::from).to_vec();
        let found = store.stored_delivery_ids(&ids).await.unwrap();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(!found.contains("none"));
        for id in ["p0", "p4", "q"] {
            let listed = store
                .list_events(&EventFilter {
                    delivery_id: Some(id.into()),
                    limit: 10,
                    ..EventFilter::default()
                })
                .await
                .unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].delivery_id, id);
        }

        // The ignored ones are purged (q is pending); then the merge goes on.
        assert_eq!(store.purge_finished(i64::MAX).await.unwrap(), 5);
        let out = write(
            &store,
            &mut keys,
            &[delivery("p0", 0, vec![]), delivery("q", 9, vec![])],
        )
        .await;
        assert_eq!(statuses(&out), [Some(EventStatus::Ignored), None]);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM delivery_keys").await, 0);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM body_keys").await, 0);
        let more: Vec<NewDelivery> = (5..8)
            .map(|i| delivery(&format!("p{i}"), i, vec![]))
            .collect();
        write(&store, &mut keys, &more).await;
        while keys.merge_due() {
            write(&store, &mut keys, &[]).await;
        }
        // Exactly the keys of the five stored events: p0 again, q, p5..p7.
        let matching = "SELECT COUNT(*) FROM delivery_keys k JOIN events e \
                        ON e.id = k.event_id AND e.delivery_id = k.delivery_id";
        assert_eq!(count(&store, matching).await, 5);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM delivery_keys").await, 5);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM body_keys").await, 5);
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// The writer merges a quiet tail by itself, once it is old enough.
    #[tokio::test]
    async fn an_idle_writer_merges_the_tail() {
        let (store, dir) = sqlite_store("hookdock-keys-idle").await;
        let mut last = 0;
        for i in 0..3 {
            last = stored_id(
                store
                    .ingest(delivery(&format!("i{i}"), i, vec![]))
                    .await
                    .unwrap(),
            );
        }
        let deadline = Instant::now() + LIMITS.freeze_after + Duration::from_secs(10);
        while count(&store, "SELECT merged_through FROM delivery_key_state").await != last {
            assert!(Instant::now() < deadline, "the tail was not merged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(count(&store, "SELECT COUNT(*) FROM delivery_keys").await, 3);
        assert_eq!(
            store.ingest(delivery("i1", 1, vec![])).await.unwrap(),
            IngestOutcome::Duplicate { event_id: last - 1 }
        );
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }
}
