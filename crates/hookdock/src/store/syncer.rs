//! Durability of SQLite commits, off the writer's path.
//!
//! The write connection commits with `synchronous = NORMAL`: a commit writes its WAL frames
//! but does not wait for the disk. This thread then `fdatasync`s the WAL file and only after
//! that answers the callers whose writes had to be durable (ingested deliveries, barriers). A
//! waiter is answered by an `fdatasync` that started after its commit returned, so everything
//! it wrote (and everything committed before it) is on disk. Meanwhile the writer runs its next
//! transaction: the disk flush of one batch overlaps the work of the next, where a commit with
//! `synchronous = FULL` would hold the only write connection for the whole flush.
//!
//! Checkpoints still sync the WAL and the database file in NORMAL mode, and SQLite syncs a new
//! WAL header before reusing the file, so frames already answered for are never overwritten
//! before they are in the database file. Each flush that succeeds wakes the store's
//! checkpointer ([`Syncer::flushed`]), which then has new frames to copy.
//!
//! A failed flush is final: the kernel may have dropped the pages it could not write, so a
//! later flush that succeeds proves nothing. Every waiter then gets an error (deliveries are
//! answered 503 and GitHub can redeliver them), and so does every later one, until restart.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use super::StoreError;

/// Called once with the outcome of the flush that covers the waiter's commit.
pub(crate) type Waiter = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Clone)]
pub(crate) struct Syncer {
    tx: mpsc::Sender<Waiter>,
    failed: Arc<AtomicBool>,
    /// Notified after each flush that succeeded: there are new frames to checkpoint.
    flushed: Arc<Notify>,
}

impl Syncer {
    /// Starts the flushing thread for the SQLite database at `database` (its WAL file is
    /// `<database>-wal`). The thread ends when every handle is dropped.
    pub fn spawn(database: PathBuf) -> Result<Syncer, StoreError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let failed = Arc::new(AtomicBool::new(false));
        let flushed = Arc::new(Notify::new());
        let (flag, notify) = (Arc::clone(&failed), Arc::clone(&flushed));
        std::thread::Builder::new()
            .name("hookdock-sync".into())
            .spawn(move || run(Wal::new(database), rx, flag, notify))
            .map_err(|e| StoreError::Open {
                url: "sqlite".into(),
                reason: format!("cannot start the WAL flush thread: {e}"),
            })?;
        Ok(Syncer {
            tx,
            failed,
            flushed,
        })
    }

    /// Notified (one stored permit, however many flushes) after a flush that succeeded.
    pub fn flushed(&self) -> Arc<Notify> {
        Arc::clone(&self.flushed)
    }

    /// Runs `waiter` after a flush that starts after this call (so after the caller's commit).
    pub fn after_commit(&self, waiter: Waiter) {
        if let Err(mpsc::SendError(waiter)) = self.tx.send(waiter) {
            waiter(Err("the store is shutting down".into()));
        }
    }

    /// Returns once everything committed before the call is on disk.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.after_commit(Box::new(move |result| {
            let _ = reply.send(result);
        }));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Durability(reason)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// [`Syncer::barrier`] for a thread outside the runtime.
    pub fn barrier_blocking(&self) -> Result<(), StoreError> {
        let (reply, rx) = mpsc::channel();
        self.after_commit(Box::new(move |result| {
            let _ = reply.send(result);
        }));
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Durability(reason)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// True once a flush has failed (see the module documentation).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

fn run(mut wal: Wal, rx: mpsc::Receiver<Waiter>, failed: Arc<AtomicBool>, flushed: Arc<Notify>) {
    let mut waiters = Vec::new();
    while let Ok(first) = rx.recv() {
        waiters.push(first);
        waiters.extend(rx.try_iter());
        let started = Instant::now();
        let result = if failed.load(Ordering::Relaxed) {
            Err("an earlier flush of the database to disk failed; restart hookdock".to_owned())
        } else {
            wal.sync().map_err(|e| {
                failed.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "flushing the SQLite WAL to disk failed; refusing writes until restart");
                format!("flushing the database to disk failed: {e}")
            })
        };
        metrics::histogram!("hookdock_store_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("hookdock_store_sync_waiters").record(waiters.len() as f64);
        if result.is_ok() {
            flushed.notify_one();
        }
        for waiter in waiters.drain(..) {
            waiter(result.clone());
        }
    }
}

/// The WAL file, reopened if SQLite replaced it (it deletes the file when the last connection
/// closes and creates a new one on the next open).
struct Wal {
    database: PathBuf,
    path: PathBuf,
    file: Option<(File, u64, u64)>,
}

impl Wal {
    fn new(database: PathBuf) -> Wal {
        let mut path = database.clone().into_os_string();
        path.push("-wal");
        Wal {
            database,
            path: PathBuf::from(path),
            file: None,
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()),
            // No WAL file: every connection closed, which checkpoints the log into the
            // database file; flush that.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.file = None;
                return File::open(&self.database)?.sync_data();
            }
            Err(e) => return Err(e),
        };
        if self
            .file
            .as_ref()
            .is_none_or(|(_, dev, ino)| (*dev, *ino) != current)
        {
            let file = File::open(&self.path)?;
            let m = file.metadata()?;
            self.file = Some((file, m.dev(), m.ino()));
        }
        match &self.file {
            Some((file, _, _)) => file.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn barrier_flushes_the_wal_and_follows_a_replaced_file() {
        let dir = std::env::temp_dir().join(format!("hookdock-sync-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        std::fs::write(&db, b"db").unwrap();
        let syncer = Syncer::spawn(db.clone()).unwrap();
        // No WAL yet: the database file itself is flushed.
        syncer.barrier().await.unwrap();
        let wal = dir.join("x.db-wal");
        std::fs::write(&wal, b"one").unwrap();
        syncer.barrier().await.unwrap();
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"two").unwrap();
        syncer.barrier().await.unwrap();
        assert!(!syncer.failed());
        // Each good flush leaves the checkpointer a permit; a failed one does not.
        let flushed = syncer.flushed();
        tokio::time::timeout(std::time::Duration::from_secs(5), flushed.notified())
            .await
            .expect("a successful flush notifies the checkpointer");
        // Without the database file either, the flush fails, and stays failed.
        std::fs::remove_dir_all(&dir).unwrap();
        let err = syncer.barrier().await.unwrap_err();
        assert!(matches!(err, StoreError::Durability(_)), "{err}");
        assert!(syncer.failed());
        let no_permit =
            tokio::time::timeout(std::time::Duration::from_millis(50), flushed.notified()).await;
        assert!(no_permit.is_err(), "a failed flush must not notify");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&db, b"db").unwrap();
        assert!(syncer.barrier().await.is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
