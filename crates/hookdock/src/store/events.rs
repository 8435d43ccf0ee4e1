//! Stored deliveries: the batched insert behind ingest, and the read side of the events API.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::jobs::insert_jobs;
use super::keys::{DeliveryKeys, delivery_conflict_clause, events_with_delivery_ids};
use super::sql::{Sql, WriteConn, padded_chunks};
use super::{
    Dialect, EventStatus, IngestOutcome, NewDelivery, Store, StoreError, now_ms, opt_text,
};

/// Most rows in one multi-row statement (SQLite allows 32,766 parameters; rows have 21).
const MAX_ROWS_PER_STATEMENT: usize = 64;

const SUMMARY_COLUMNS: &str = "id, delivery_id, event, action, status, repository, repository_id, \
     organization, installation_id, hook_id, target_type, target_id, sender, ordering_key, \
     content_type, received_at, updated_at, last_error, body_size, body_sha256";

/// An event as listed by the API and CLI (no body).
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub id: i64,
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub status: String,
    pub repository: Option<String>,
    pub repository_id: Option<i64>,
    pub organization: Option<String>,
    pub installation_id: Option<i64>,
    pub hook_id: Option<i64>,
    pub target_type: Option<String>,
    pub target_id: Option<i64>,
    pub sender: Option<String>,
    pub ordering_key: String,
    pub content_type: String,
    #[serde(serialize_with = "super::ser_time")]
    pub received_at: i64,
    #[serde(serialize_with = "super::ser_time")]
    pub updated_at: i64,
    pub last_error: Option<String>,
    pub body_size: i64,
    /// Hex SHA-256 of the body as received.
    pub body_sha256: String,
}

impl EventSummary {
    /// `event.action`, as GitHub's documentation names deliveries.
    pub fn label(&self) -> String {
        match &self.action {
            Some(a) => format!("{}.{a}", self.event),
            None => self.event.clone(),
        }
    }

    fn from_row(row: &AnyRow) -> Result<EventSummary, sqlx::Error> {
        let sha: Vec<u8> = row.try_get("body_sha256")?;
        Ok(EventSummary {
            id: row.try_get("id")?,
            delivery_id: row.try_get("delivery_id")?,
            event: row.try_get("event")?,
            action: opt_text(row, "action")?,
            status: row.try_get("status")?,
            repository: opt_text(row, "repository")?,
            repository_id: row.try_get("repository_id")?,
            organization: opt_text(row, "organization")?,
            installation_id: row.try_get("installation_id")?,
            hook_id: row.try_get("hook_id")?,
            target_type: opt_text(row, "target_type")?,
            target_id: row.try_get("target_id")?,
            sender: opt_text(row, "sender")?,
            ordering_key: row.try_get("ordering_key")?,
            content_type: row.try_get("content_type")?,
            received_at: row.try_get("received_at")?,
            updated_at: row.try_get("updated_at")?,
            last_error: opt_text(row, "last_error")?,
            body_size: row.try_get("body_size")?,
            body_sha256: hex::encode(sha),
        })
    }
}

/// One job of an event, as shown in its detail.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: i64,
    pub handler: String,
    pub status: String,
    pub attempts: i64,
    #[serde(serialize_with = "super::ser_time")]
    pub run_at: i64,
    pub last_error: Option<String>,
    #[serde(serialize_with = "super::ser_time")]
    pub updated_at: i64,
}

/// One recorded state change of a job.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub job_id: i64,
    pub handler: String,
    pub status: String,
    pub attempt: i64,
    #[serde(serialize_with = "super::ser_time")]
    pub at: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub summary: EventSummary,
    pub headers: serde_json::Value,
    pub jobs: Vec<JobSummary>,
    pub history: Vec<HistoryEntry>,
}

/// The body of a delivery exactly as received.
#[derive(Debug, Clone)]
pub struct StoredBody {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Filters of the events list; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub delivery_id: Option<String>,
    pub status: Option<EventStatus>,
    pub event: Option<String>,
    pub action: Option<String>,
    pub repository: Option<String>,
    /// Only events with a smaller id (the cursor of the previous page).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// One page of the events list.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<EventSummary>,
    /// The `before_id` of the next page, when more events match.
    pub next_before: Option<i64>,
}

/// Writes a batch of deliveries in the caller's transaction. Duplicates (already stored, or
/// repeated within the batch) change nothing; a new delivery id whose body was seen before (or
/// earlier in the batch) is stored as `replay_suspected` and gets no jobs.
///
/// `keys` says which ids are stored and which bodies were seen (see `store::keys`); the rows
/// then go in with a few multi-row statements (`sql::padded_chunks`). On PostgreSQL another
/// instance may store the same id meanwhile: `ON CONFLICT (delivery_id) DO NOTHING` skips it,
/// and ids missing from `RETURNING` are looked up again; the spare slots that pad a statement
/// there rely on it too.
pub(crate) async fn insert_deliveries(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    keys: &mut DeliveryKeys,
    batch: &[&NewDelivery],
    now: i64,
) -> Result<Vec<IngestOutcome>, sqlx::Error> {
    let mut outcomes: Vec<Option<IngestOutcome>> = vec![None; batch.len()];
    // Repeats of a delivery id inside the batch take the outcome of its first occurrence.
    let mut first_index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let mut firsts: Vec<usize> = Vec::with_capacity(batch.len());
    let mut repeat_of: Vec<Option<usize>> = vec![None; batch.len()];
    for (i, d) in batch.iter().enumerate() {
        match first_index.entry(d.delivery_id.as_str()) {
            Entry::Occupied(first) => repeat_of[i] = Some(*first.get()),
            Entry::Vacant(slot) => {
                slot.insert(i);
                firsts.push(i);
            }
        }
    }

    keys.sync(conn).await?;
    let ids: Vec<&str> = firsts
        .iter()
        .map(|&i| batch[i].delivery_id.as_str())
        .collect();
    let stored = keys.stored(conn, &ids).await?;
    let mut new: Vec<usize> = Vec::with_capacity(firsts.len());
    for i in firsts {
        match stored.get(batch[i].delivery_id.as_str()) {
            Some(&event_id) => outcomes[i] = Some(IngestOutcome::Duplicate { event_id }),
            None => new.push(i),
        }
    }
    // The replay guard: a body seen before, or earlier in this batch. A body that comes only
    // with a duplicate id is not seen: that delivery stores nothing.
    let bodies: Vec<[u8; 32]> = new.iter().map(|&i| batch[i].body_sha256).collect();
    let mut seen = keys.seen_bodies(conn, &bodies).await?;
    let statuses: Vec<EventStatus> = new
        .iter()
        .map(|&i| {
            let d = batch[i];
            if !seen.insert(d.body_sha256) {
                EventStatus::ReplaySuspected
            } else if d.handlers.is_empty() {
                EventStatus::Ignored
            } else {
                EventStatus::Pending
            }
        })
        .collect();

    let mut inserted: HashMap<&str, i64> = HashMap::with_capacity(new.len());
    // Spare slots rely on the conflict clause; where there is none (SQLite), statements are
    // never padded (`Dialect::pads_statements`), so there every slot is a row to insert.
    let on_conflict = delivery_conflict_clause(dialect);
    for (start, rows, slots) in padded_chunks(dialect, new.len(), MAX_ROWS_PER_STATEMENT) {
        let mut sql = Sql::with(
            dialect,
            "INSERT INTO events (delivery_id, event, action, status, repository, \
             repository_id, organization, installation_id, hook_id, target_type, target_id, \
             sender, ordering_key, content_type, headers, received_at, updated_at, body_size, \
             body_sha256, body) VALUES ",
        );
        for n in 0..slots {
            // Spare slots repeat the chunk's last delivery id, which the row before them has
            // taken (or which conflicts already), with an empty body: skipped.
            let spare = n >= rows;
            let k = start + n.min(rows - 1);
            let d = batch[new[k]];
            sql.push(if n == 0 { "(" } else { ", (" });
            sql.bind(d.delivery_id.as_str()).push(", ");
            sql.bind(d.event.as_str()).push(", ");
            sql.bind(d.action.as_deref()).push(", ");
            sql.bind(statuses[k].as_str()).push(", ");
            sql.bind(d.repository.as_deref()).push(", ");
            sql.bind(d.repository_id).push(", ");
            sql.bind(d.organization.as_deref()).push(", ");
            sql.bind(d.installation_id).push(", ");
            sql.bind(d.hook_id).push(", ");
            sql.bind(d.target_type).push(", ");
            sql.bind(d.target_id).push(", ");
            sql.bind(d.sender.as_deref()).push(", ");
            sql.bind(d.ordering_key.as_str()).push(", ");
            sql.bind(d.content_type).push(", ");
            sql.bind(if spare { "{}" } else { d.headers_json.as_str() })
                .push(", ");
            sql.bind(d.received_at).push(", ");
            sql.bind(now).push(", ");
            sql.bind(d.body_size).push(", ");
            sql.bind(&d.body_sha256[..]).push(", ");
            sql.bind(if spare { &[0u8][..] } else { &d.body_zstd[..] })
                .push(")");
        }
        sql.push(on_conflict).push(" RETURNING id, delivery_id");
        for row in conn.rows(&sql).await? {
            let delivery: String = row.try_get(1)?;
            let Some(&i) = first_index.get(delivery.as_str()) else {
                return Err(sqlx::Error::Protocol(format!(
                    "inserted delivery {delivery} that is not in the batch"
                )));
            };
            inserted.insert(batch[i].delivery_id.as_str(), row.try_get(0)?);
        }
    }

    // Taken by another instance between the lookup and the insert (PostgreSQL).
    let mut taken: Vec<&str> = Vec::new();
    let mut jobs: Vec<(i64, &'static str, &str)> = Vec::new();
    for (k, &i) in new.iter().enumerate() {
        let d = batch[i];
        match inserted.get(d.delivery_id.as_str()) {
            Some(&event_id) => {
                let status = statuses[k];
                outcomes[i] = Some(IngestOutcome::Stored { event_id, status });
                keys.record(&d.delivery_id, &d.body_sha256, event_id);
                if status == EventStatus::Pending {
                    jobs.extend(
                        d.handlers
                            .iter()
                            .map(|h| (event_id, *h, d.ordering_key.as_str())),
                    );
                }
            }
            None => taken.push(d.delivery_id.as_str()),
        }
    }
    if !taken.is_empty() {
        let ids = keys.stored(conn, &taken).await?;
        for id in taken {
            let event_id = ids.get(id).copied().ok_or_else(|| {
                sqlx::Error::Protocol(format!("delivery {id} neither inserted nor found"))
            })?;
            outcomes[first_index[id]] = Some(IngestOutcome::Duplicate { event_id });
        }
    }

    insert_jobs(conn, dialect, &jobs, now).await?;

    for (i, rep) in repeat_of.iter().enumerate() {
        if let Some(first) = rep {
            let event_id = match outcomes[*first] {
                Some(
                    IngestOutcome::Stored { event_id, .. } | IngestOutcome::Duplicate { event_id },
                ) => event_id,
                None => continue,
            };
            outcomes[i] = Some(IngestOutcome::Duplicate { event_id });
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| sqlx::Error::Protocol("delivery without outcome".into())))
        .collect()
}

/// After a write tried again because its connection broke: the deliveries it found already
/// stored that an earlier try had stored (its commit reached the server and only the answer was
/// lost), told from a genuine duplicate by the row's receipt time and body hash, which are this
/// delivery's own. They are answered as stored, with the status that try gave them (a
/// worker may have moved it on since), instead of `duplicate_skipped`. Only the first of a
/// delivery id's repeats in the batch can be the one stored.
pub(crate) async fn own_earlier_commit(
    conn: &mut impl WriteConn,
    dialect: Dialect,
    batch: &[&NewDelivery],
    outcomes: &mut [IngestOutcome],
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            IngestOutcome::Duplicate { event_id } => Some(*event_id),
            IngestOutcome::Stored { .. } => None,
        })
        .collect();
    let mut rows: HashMap<i64, (String, i64, Vec<u8>)> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
        let mut sql = Sql::with(
            dialect,
            "SELECT id, status, received_at, body_sha256 FROM events WHERE id IN ",
        );
        sql.bind_list(chunk.iter().copied());
        for row in conn.rows(&sql).await? {
            rows.insert(
                row.try_get(0)?,
                (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
            );
        }
    }
    let mut taken = HashSet::with_capacity(rows.len());
    for (d, outcome) in batch.iter().zip(outcomes.iter_mut()) {
        let IngestOutcome::Duplicate { event_id } = *outcome else {
            continue;
        };
        let Some((status, received_at, sha256)) = rows.get(&event_id) else {
            continue;
        };
        if *received_at == d.received_at
            && sha256[..] == d.body_sha256[..]
            && taken.insert(event_id)
        {
            let status = match EventStatus::parse(status) {
                Some(held @ (EventStatus::Ignored | EventStatus::ReplaySuspected)) => held,
                _ => EventStatus::Pending,
            };
            *outcome = IngestOutcome::Stored { event_id, status };
        }
    }
    Ok(())
}

/// The zstd dictionary delivery bodies are compressed with, trained on real GitHub payloads
/// scrubbed of their own data (`payloads/train-zstd-dictionary.py` says how): their keys, URL
/// templates and fixed words repeat across deliveries, and with the dictionary zstd refers to
/// them instead of spelling them out in every body.
///
/// A body can only be read back with the dictionary it was written with: a new dictionary must be
/// added beside this one (and chosen in [`frame_dictionary`] by its ID), never replace it.
pub(crate) const BODY_DICTIONARY: &[u8] = include_bytes!("../../payloads/github-webhooks.zdict");

/// The ID zstd writes into every frame compressed with [`BODY_DICTIONARY`] (its bytes 4..8).
pub(crate) const BODY_DICTIONARY_ID: u32 = u32::from_le_bytes([
    BODY_DICTIONARY[4],
    BODY_DICTIONARY[5],
    BODY_DICTIONARY[6],
    BODY_DICTIONARY[7],
]);

/// [`BODY_DICTIONARY`] prepared for decompression once, shared by every thread's context.
static BODY_DDICT: std::sync::LazyLock<zstd::dict::DecoderDictionary<'static>> =
    std::sync::LazyLock::new(|| zstd::dict::DecoderDictionary::copy(BODY_DICTIONARY));

thread_local! {
    /// One decompression context per thread, reused (creating one costs more than
    /// decompressing a typical payload).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The dictionary a stored frame needs, from the ID in its header: none for ID 0 (bodies stored
/// before hookdock used a dictionary), [`BODY_DICTIONARY`] for its ID. Any other ID is an error:
/// the frame refers to content only that dictionary has.
fn frame_dictionary(
    compressed: &[u8],
) -> Result<Option<&'static zstd::dict::DecoderDictionary<'static>>, String> {
    match zstd::zstd_safe::get_dict_id_from_frame(compressed).map(std::num::NonZeroU32::get) {
        None => Ok(None),
        Some(BODY_DICTIONARY_ID) => Ok(Some(&BODY_DDICT)),
        Some(id) => Err(format!(
            "zstd: the body was compressed with dictionary {id}, which this build of hookdock \
             does not have (it has dictionary {BODY_DICTIONARY_ID}); the body cannot be read back"
        )),
    }
}

/// A stored body's bytes as received, from its zstd frame: written with [`BODY_DICTIONARY`], or
/// without a dictionary (bodies stored before hookdock used one).
pub fn decompress_body(compressed: &[u8]) -> Result<Vec<u8>, String> {
    let dictionary = frame_dictionary(compressed)?;
    let size = match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(size)) => usize::try_from(size).map_err(|_| "body too large".to_owned())?,
        // Frames written without their size (none of hookdock's): stream them.
        Ok(None) => {
            let dictionary_bytes = if dictionary.is_some() {
                BODY_DICTIONARY
            } else {
                &[]
            };
            let mut body = Vec::new();
            zstd::stream::read::Decoder::with_dictionary(compressed, dictionary_bytes)
                .and_then(|mut decoder| std::io::Read::read_to_end(&mut decoder, &mut body))
                .map_err(|e| format!("zstd: {e}"))?;
            return Ok(body);
        }
        Err(e) => return Err(format!("zstd: not a frame ({e:?})")),
    };
    if size > crate::ingest::MAX_BODY_BYTES {
        return Err(format!(
            "zstd: frame claims {size} bytes, more than a delivery can hold"
        ));
    }
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        match slot.as_mut() {
            Some(d) => {
                // The context keeps the dictionary it was last given: set or clear it for every
                // frame, so each is decoded as it was written (zstd does not promise the same
                // bytes from a frame written without a dictionary decoded with one).
                match dictionary {
                    Some(dictionary) => d.set_prepared_dictionary(dictionary),
                    None => d.set_dictionary(&[]),
                }
                .map_err(|e| format!("zstd: {e}"))?;
                d.decompress(compressed, size)
                    .map_err(|e| format!("zstd: {e}"))
            }
            None => Err("zstd: no decompression context".to_owned()),
        }
    })
}

impl Store {
    /// [`Store::list_events`] as a page: one row more than `limit` is read to tell whether
    /// another page follows.
    pub async fn list_events_page(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        let limit = filter.limit as usize;
        let probe = EventFilter {
            limit: filter.limit.saturating_add(1),
            ..filter.clone()
        };
        let mut events = self.list_events(&probe).await?;
        let more = events.len() > limit;
        events.truncate(limit);
        let next_before = events.last().filter(|_| more).map(|e| e.id);
        Ok(EventPage {
            events,
            next_before,
        })
    }

    /// Events newest first, filtered; at most `limit`.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let mut sql = Sql::with(
            self.inner.dialect,
            &format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE 1 = 1"),
        );
        if let Some(v) = &filter.delivery_id {
            sql.push(" AND ");
            events_with_delivery_ids(&mut sql, self.inner.dialect, [v.as_str()]);
        }
        if let Some(v) = filter.status {
            sql.push(" AND status = ").bind(v.as_str());
        }
        if let Some(v) = &filter.event {
            sql.push(" AND event = ").bind(v.as_str());
        }
        if let Some(v) = &filter.action {
            sql.push(" AND action = ").bind(v.as_str());
        }
        if let Some(v) = &filter.repository {
            sql.push(" AND repository = ").bind(v.as_str());
        }
        if let Some(v) = filter.before_id {
            sql.push(" AND id < ").bind(v);
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(filter.limit));
        let rows = sql.fetch_all(self.inner.reads()).await?;
        Ok(rows
            .iter()
            .map(EventSummary::from_row)
            .collect::<Result<_, _>>()?)
    }

    pub async fn event_summary(&self, id: i64) -> Result<EventSummary, StoreError> {
        let mut sql = Sql::with(
            self.inner.dialect,
            &format!("SELECT {SUMMARY_COLUMNS} FROM events WHERE id = "),
        );
        sql.bind(id);
        let row = sql
            .fetch_optional(self.inner.reads())
            .await?
            .ok_or(StoreError::EventNotFound(id))?;
        Ok(EventSummary::from_row(&row)?)
    }

    /// An event with its headers, jobs and job history.
    pub async fn event_detail(&self, id: i64) -> Result<EventDetail, StoreError> {
        let summary = self.event_summary(id).await?;
        let mut sql = Sql::new("SELECT headers FROM events WHERE id = ");
        sql.bind(id);
        let headers_text: String = match sql.fetch_optional(self.inner.reads()).await? {
            Some(row) => row.try_get(0)?,
            None => return Err(StoreError::EventNotFound(id)),
        };
        let headers = serde_json::from_str(&headers_text).unwrap_or(serde_json::Value::Null);

        let mut sql = Sql::new(
            "SELECT id, handler, status, attempts, run_at, last_error, updated_at FROM jobs \
             WHERE event_id = ",
        );
        sql.bind(id).push(" ORDER BY id");
        let jobs = sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(JobSummary {
                    id: r.try_get("id")?,
                    handler: r.try_get("handler")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    run_at: r.try_get("run_at")?,
                    last_error: opt_text(r, "last_error")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;

        let mut sql = Sql::new(
            "SELECT h.job_id, j.handler, h.status, h.attempt, h.at, h.error FROM job_history h \
             JOIN jobs j ON j.id = h.job_id WHERE h.event_id = ",
        );
        sql.bind(id).push(" ORDER BY h.id");
        let history = sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(HistoryEntry {
                    job_id: r.try_get(0)?,
                    handler: r.try_get(1)?,
                    status: r.try_get(2)?,
                    attempt: r.try_get(3)?,
                    at: r.try_get(4)?,
                    error: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(EventDetail {
            summary,
            headers,
            jobs,
            history,
        })
    }

    /// The delivery body exactly as received, decompressed and checked against its hash.
    pub async fn event_body(&self, id: i64) -> Result<StoredBody, StoreError> {
        let mut sql = Sql::new("SELECT content_type, body, body_sha256 FROM events WHERE id = ");
        sql.bind(id);
        let row = sql
            .fetch_optional(self.inner.reads())
            .await?
            .ok_or(StoreError::EventNotFound(id))?;
        let compressed: Vec<u8> = row.try_get(1)?;
        let expected: Vec<u8> = row.try_get(2)?;
        let corrupt = |reason: String| StoreError::CorruptBody {
            event_id: id,
            reason,
        };
        let bytes = decompress_body(&compressed).map_err(corrupt)?;
        use sha2::Digest;
        if sha2::Sha256::digest(&bytes).as_slice() != expected.as_slice() {
            return Err(corrupt("SHA-256 does not match the stored hash".into()));
        }
        Ok(StoredBody {
            content_type: row.try_get(0)?,
            bytes,
        })
    }

    /// Counts events per status (for the CLI summary and tests).
    pub async fn count_events_by_status(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM events GROUP BY status")
            .fetch_all(self.inner.reads())
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Deletes done and ignored events received before `cutoff_ms`, in small transactions so
    /// ingest is never held up for long. Pending, failed, dead and suspected events are kept.
    ///
    /// Ids grow with arrival, so only events before the first one received since the cutoff
    /// can have expired: each transaction reads the status index up to that event instead of
    /// checking the time of every finished event (a month of them between two purges; on
    /// SQLite the delete holds the write lock while it reads, and ingest waits). An event
    /// stamped later than now (a clock that ran ahead) does not bound the purge, and one
    /// stamped before an earlier event (a clock set back) goes in a later purge, once the
    /// events before it have expired too.
    pub async fn purge_finished(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut first_kept = Sql::new("SELECT id FROM events WHERE received_at >= ");
        first_kept
            .bind(cutoff_ms)
            .push(" AND received_at <= ")
            .bind(now_ms())
            .push(" ORDER BY id LIMIT 1");
        let bound: Option<i64> = match first_kept.fetch_optional(self.inner.reads()).await? {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        };
        let mut total = 0;
        loop {
            let mut sql = Sql::new(
                "DELETE FROM events WHERE id IN (SELECT id FROM events \
                 WHERE status IN ('done', 'ignored') AND received_at < ",
            );
            sql.bind(cutoff_ms);
            if let Some(bound) = bound {
                sql.push(" AND id < ").bind(bound);
            }
            sql.push(" ORDER BY id LIMIT 500)");
            let deleted = sql.execute(self.inner.writes()).await?.rows_affected();
            total += deleted;
            if deleted == 0 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::StoreOptions;

    /// A delivery of an `issues` event whose body and hash are `body` repeated.
    pub(in crate::store) fn delivery(
        id: &str,
        body: u8,
        handlers: Vec<&'static str>,
    ) -> NewDelivery {
        NewDelivery {
            delivery_id: id.to_owned(),
            event: "issues".into(),
            action: Some("opened".into()),
            repository: Some("o/r".into()),
            repository_id: Some(1),
            organization: None,
            installation_id: None,
            hook_id: Some(7),
            target_type: None,
            target_id: None,
            sender: Some("u".into()),
            ordering_key: "o/r#1".into(),
            content_type: "application/json",
            headers_json: "{}".into(),
            body_zstd: vec![body; 8],
            body_size: 8,
            body_sha256: [body; 32],
            handlers,
            received_at: 1,
        }
    }

    async fn ingest(store: &Store, batch: &[NewDelivery]) -> Vec<IngestOutcome> {
        use sqlx::Connection;
        let mut conn = store.inner.write.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let refs: Vec<&NewDelivery> = batch.iter().collect();
        let mut keys = DeliveryKeys::new(store.dialect());
        let out = insert_deliveries(&mut *tx, store.dialect(), &mut keys, &refs, 2)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        out
    }

    fn stored(o: IngestOutcome) -> (i64, EventStatus) {
        match o {
            IngestOutcome::Stored { event_id, status } => (event_id, status),
            other => panic!("expected a stored delivery, got {other:?}"),
        }
    }

    /// A migrated store on a SQLite file `db.sqlite` in a new directory, and that directory.
    pub(in crate::store) async fn sqlite_store(prefix: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/db.sqlite", dir.display());
        let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
        store.migrate().await.unwrap();
        (store, dir)
    }

    /// A JSON body like GitHub's, for the decompression tests.
    const BODY: &[u8] = include_bytes!("../../payloads/issues.opened.json");

    /// The embedded dictionary is the committed file `payloads/train-zstd-dictionary.py` made.
    #[test]
    fn body_dictionary_id_is_the_one_zstd_reads() {
        assert_eq!(
            zstd::zstd_safe::get_dict_id_from_dict(BODY_DICTIONARY).map(|id| id.get()),
            Some(BODY_DICTIONARY_ID)
        );
        assert_eq!(BODY_DICTIONARY_ID, 136_444_512);
        assert_eq!(BODY_DICTIONARY.len(), 65_536);
    }

    /// Bodies stored before the dictionary (frames with no dictionary ID) still read back, also
    /// on a thread whose context last decoded a frame with the dictionary.
    #[test]
    fn bodies_compressed_without_the_dictionary_still_decompress() {
        let ours = zstd::bulk::Compressor::with_dictionary(1, BODY_DICTIONARY)
            .unwrap()
            .compress(BODY)
            .unwrap();
        for level in [1, 3, 19] {
            let old = zstd::bulk::compress(BODY, level).unwrap();
            assert_eq!(zstd::zstd_safe::get_dict_id_from_frame(&old), None);
            assert_eq!(decompress_body(&ours).unwrap(), BODY);
            assert_eq!(decompress_body(&old).unwrap(), BODY);
        }
        // Streamed frames, which do not record their size.
        assert_eq!(
            decompress_body(&zstd::encode_all(BODY, 1).unwrap()).unwrap(),
            BODY
        );
        let mut unsized_frame =
            zstd::bulk::Compressor::with_dictionary(1, BODY_DICTIONARY).unwrap();
        unsized_frame.include_contentsize(false).unwrap();
        let frame = unsized_frame.compress(BODY).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).ok(),
            Some(None)
        );
        assert_eq!(decompress_body(&frame).unwrap(), BODY);
    }

    /// A frame that names a dictionary this build does not have is refused with a reason, not
    /// decoded into wrong bytes.
    #[test]
    fn a_frame_with_another_dictionary_is_an_error() {
        // The same dictionary under another ID stands for one this build does not know.
        let mut foreign = BODY_DICTIONARY.to_vec();
        foreign[4..8].copy_from_slice(&7_u32.to_le_bytes());
        for include_size in [true, false] {
            let mut compressor = zstd::bulk::Compressor::with_dictionary(1, &foreign).unwrap();
            compressor.include_contentsize(include_size).unwrap();
            let frame = compressor.compress(BODY).unwrap();
            assert_eq!(
                zstd::zstd_safe::get_dict_id_from_frame(&frame).map(|id| id.get()),
                Some(7)
            );
            let error = decompress_body(&frame).unwrap_err();
            assert!(
                error.contains("dictionary 7") && error.contains("cannot be read back"),
                "{error}"
            );
        }
        assert!(
            decompress_body(b"not zstd")
                .unwrap_err()
                .contains("not a frame")
        );
    }

    /// What the writer commits reaches the database file while deliveries come in, so the
    /// log does not keep growing. (That checkpoints are prompted by the WAL flushes is the
    /// syncer's test; this one would also pass on the once-a-second fallback.)
    #[tokio::test]
    async fn committed_deliveries_are_checkpointed_into_the_database_file() {
        let (store, dir) = sqlite_store("hookdock-ckpt").await;
        let file_len = || std::fs::metadata(dir.join("db.sqlite")).map_or(0, |m| m.len());
        let before = file_len();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..256u32 {
            let mut d = delivery(&format!("ckpt-{i}"), 0, Vec::new());
            d.body_zstd = i.to_le_bytes().repeat(2048);
            d.body_sha256[..4].copy_from_slice(&i.to_le_bytes());
            let store = store.clone();
            tasks.spawn(async move { store.ingest(d).await });
        }
        while let Some(outcome) = tasks.join_next().await {
            assert!(matches!(
                outcome.unwrap().unwrap(),
                IngestOutcome::Stored {
                    status: EventStatus::Ignored,
                    ..
                }
            ));
        }
        // 256 bodies of 8 KiB: at least 2 MiB more in the database file once checkpointed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while file_len() < before + 2 * 1024 * 1024 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was not checkpointed: database file {} bytes, {before} before",
                file_len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// A write tried again after its first try's commit landed: what that try stored (same
    /// receipt time and body hash) is answered as stored, with the status it was given; a
    /// delivery that only shares an id with a stored one, or repeats one in the batch, is still
    /// a duplicate.
    #[tokio::test]
    async fn a_retried_write_owns_what_its_first_try_stored() {
        let (store, dir) = sqlite_store("hookdock-own-commit").await;
        let h = vec!["activity"];
        let first = [
            delivery("a", 1, h.clone()),
            delivery("b", 1, h.clone()),
            delivery("c", 2, Vec::new()),
        ];
        let stored_first: Vec<(i64, EventStatus)> = ingest(&store, &first)
            .await
            .into_iter()
            .map(stored)
            .collect();
        // A worker moved `a` on meanwhile.
        sqlx::query("UPDATE events SET status = 'done' WHERE id = ?")
            .bind(stored_first[0].0)
            .execute(store.inner.writes())
            .await
            .unwrap();
        let mut later = delivery("a", 1, h.clone());
        later.received_at = 5;
        let again = [
            first[0].clone(),
            first[1].clone(),
            first[2].clone(),
            first[0].clone(),
            later,
        ];
        let refs: Vec<&NewDelivery> = again.iter().collect();
        let mut outcomes = ingest(&store, &again).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, IngestOutcome::Duplicate { .. })),
            "{outcomes:?}"
        );
        let mut conn = store.inner.write.acquire().await.unwrap();
        own_earlier_commit(&mut *conn, store.dialect(), &refs, &mut outcomes)
            .await
            .unwrap();
        let (a, b, c) = (stored_first[0].0, stored_first[1].0, stored_first[2].0);
        assert_eq!(
            outcomes,
            [
                IngestOutcome::Stored {
                    event_id: a,
                    status: EventStatus::Pending
                },
                IngestOutcome::Stored {
                    event_id: b,
                    status: EventStatus::ReplaySuspected
                },
                IngestOutcome::Stored {
                    event_id: c,
                    status: EventStatus::Ignored
                },
                IngestOutcome::Duplicate { event_id: a },
                IngestOutcome::Duplicate { event_id: a },
            ]
        );
        drop(conn);
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// Duplicates and replays inside one batch and across batches, as the writer groups them.
    #[tokio::test]
    async fn batch_dedup_and_replay_guard() {
        let (store, dir) = sqlite_store("hookdock-batch").await;
        let h = vec!["activity", "metrics"];

        let out = ingest(
            &store,
            &[
                delivery("a", 1, h.clone()),
                delivery("b", 1, h.clone()),
                delivery("c", 2, h.clone()),
                delivery("a", 1, h.clone()),
                delivery("e", 3, Vec::new()),
                delivery("f", 1, h.clone()),
            ],
        )
        .await;
        let (a, sa) = stored(out[0]);
        assert_eq!(sa, EventStatus::Pending);
        assert_eq!(stored(out[1]).1, EventStatus::ReplaySuspected);
        assert_eq!(stored(out[2]).1, EventStatus::Pending);
        assert_eq!(out[3], IngestOutcome::Duplicate { event_id: a });
        assert_eq!(stored(out[4]).1, EventStatus::Ignored);
        assert_eq!(stored(out[5]).1, EventStatus::ReplaySuspected);

        // Across batches: a stored id is a duplicate whatever its body; a stored body is a
        // replay; a body that comes only with a duplicate id is not known.
        let out = ingest(
            &store,
            &[
                delivery("g", 2, h.clone()),
                delivery("a", 9, h.clone()),
                delivery("i", 9, h.clone()),
                delivery("c", 2, h.clone()),
            ],
        )
        .await;
        assert_eq!(stored(out[0]).1, EventStatus::ReplaySuspected);
        assert_eq!(out[1], IngestOutcome::Duplicate { event_id: a });
        assert_eq!(stored(out[2]).1, EventStatus::Pending);
        assert!(matches!(out[3], IngestOutcome::Duplicate { .. }));

        // Jobs only for pending events, one per handler; nothing stored from spare slots.
        let jobs: i64 = sqlx::query("SELECT COUNT(*) FROM jobs")
            .fetch_one(&store.inner.read)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(jobs, 3 * 2);
        let counts = store.count_events_by_status().await.unwrap();
        assert_eq!(counts.values().sum::<i64>(), 7);
        let body = store.event_body(a).await;
        assert!(
            matches!(body, Err(StoreError::CorruptBody { .. })),
            "{body:?}"
        );
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }
}
