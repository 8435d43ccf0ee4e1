//! The group-commit writer's SQLite connection writes each commit's log in one system call
//! (per 128 KiB).
//!
//! SQLite writes every frame of its write-ahead log (WAL) as two `pwrite`s, the 24-byte frame
//! header and then the page, so a commit of twenty pages costs forty system calls: 2.2–2.5 µs
//! of kernel time a frame on the machine of BENCHMARKS.md (2026-12-08), against 0.6–0.7 µs a
//! frame written together. This module registers a SQLite VFS, a thin layer over the default
//! one, whose WAL files gather the frames of a commit, which SQLite writes in order at
//! consecutive offsets, and write them together (one call per 128 KiB, the most the default
//! VFS writes at once) as soon as the commit frame (the one whose header carries the
//! database's size) is complete, before SQLite makes the commit visible to other connections
//! (it publishes a commit only after writing its frames). Every other operation on the file (a
//! read, a sync, its size, a truncation, a write elsewhere, closing it) writes what was
//! gathered first, so the file always reads as SQLite wrote it.
//!
//! Frames SQLite writes before a commit (a "cache spill" of a transaction larger than the page
//! cache) would stay gathered until the commit, and after a rollback could be written over
//! another connection's commit: [`open`], the only way to a connection on this VFS, turns
//! spilling off (`PRAGMA cache_spill = OFF`), so that the only frames written are those of a
//! commit, which always ends with the commit frame. Other files (the database itself) are the
//! default VFS's own, untouched.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The VFS's name, for `sqlite3_open_v2`.
const NAME: &CStr = c"hookdock-wal";

/// Bytes of a WAL frame header; SQLite writes nothing else of that size to the log (its own
/// header is 32 bytes, pages at least 512).
const FRAME_HEADER: usize = 24;

/// Most bytes gathered before they are written anyway (a commit of a 25 MB delivery's pages).
const MOST_GATHERED: usize = 1 << 20;

/// The default VFS this one wraps, once registered.
struct Base(*mut ffi::sqlite3_vfs);

// SAFETY: the pointer is to SQLite's default VFS, a static object SQLite itself shares between
// threads; this module only reads it.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

static REGISTERED: OnceLock<Result<Base, String>> = OnceLock::new();

/// A WAL file: the default VFS's own file object (`inner`, placed after this header in the
/// memory SQLite gives [`open_file`]) and the frames gathered for it.
#[repr(C)]
struct WalFile {
    /// First, as SQLite expects of every file object: the methods below.
    file: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// Bytes gathered, to be written just before `next`.
    gathered: Vec<u8>,
    /// Where the last write ended (gathered or not): a write that starts there continues it,
    /// and what is gathered ends there.
    next: i64,
    /// The last frame header written was a commit frame's: each write after it that is not a
    /// frame header (the commit frame's page; with `synchronous = FULL`, its padding) is
    /// written at once with what was gathered, until the header of a frame that is not a
    /// commit (the next transaction's).
    commit: bool,
}

/// Where the default VFS's file object starts in the memory SQLite allocates for a WAL file.
const INNER_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: a WAL file has no shared memory and is never memory-mapped (both are the
    // database file's).
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Registers the VFS (once per process); why not, in words.
fn register() -> Result<(), String> {
    let registered = REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find initializes SQLite if needed and returns its default VFS
        // (a static object) or null; the copy made of it is leaked, so it lives as long as the
        // process, as a registered VFS must.
        unsafe {
            let base = ffi::sqlite3_vfs_find(std::ptr::null());
            if base.is_null() {
                return Err("SQLite has no default VFS".to_owned());
            }
            let inner_size = usize::try_from((*base).szOsFile).unwrap_or(0);
            let Ok(size) = c_int::try_from(INNER_OFFSET + inner_size) else {
                return Err("the default VFS's file objects are too large".to_owned());
            };
            let mut vfs = *base;
            vfs.szOsFile = size;
            vfs.pNext = std::ptr::null_mut();
            vfs.zName = NAME.as_ptr();
            vfs.xOpen = Some(open_file);
            let vfs = Box::leak(Box::new(vfs));
            match ffi::sqlite3_vfs_register(vfs, 0) {
                ffi::SQLITE_OK => Ok(Base(base)),
                rc => Err(format!("cannot register a SQLite VFS (error code {rc})")),
            }
        }
    });
    registered.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Opens a connection to the database file at `path` on this VFS, with cache spilling off
/// (see the module's doc comment).
pub(crate) fn open(path: &std::path::Path) -> Result<rusqlite::Connection, String> {
    register()?;
    let name = NAME.to_str().map_err(|e| e.to_string())?;
    let conn =
        rusqlite::Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), name)
            .map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA cache_spill = OFF;")
        .map_err(|e| e.to_string())?;
    let spill: i64 = conn
        .query_row("PRAGMA cache_spill", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if spill != 0 {
        return Err("SQLite did not turn cache spilling off".to_owned());
    }
    Ok(conn)
}

fn base() -> Option<*mut ffi::sqlite3_vfs> {
    match REGISTERED.get() {
        Some(Ok(Base(base))) => Some(*base),
        _ => None,
    }
}

/// `xOpen`: WAL files get the methods below around the default VFS's file object; every other
/// file is the default VFS's own, at the start of the memory SQLite gives.
unsafe extern "C" fn open_file(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(base) = base() else {
        return ffi::SQLITE_ERROR;
    };
    // SAFETY: `base` is the default VFS; SQLite gives `file` szOsFile bytes (aligned for any
    // object), which hold either the default VFS's file object alone, or a `WalFile` followed
    // by it at INNER_OFFSET.
    unsafe {
        let Some(base_open) = (*base).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return base_open(base, name, file, flags, out_flags);
        }
        let inner = file
            .cast::<u8>()
            .add(INNER_OFFSET)
            .cast::<ffi::sqlite3_file>();
        let rc = base_open(base, name, inner, flags, out_flags);
        if (*inner).pMethods.is_null() {
            // Nothing to close: SQLite calls no method of a file whose methods are null.
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        file.cast::<WalFile>().write(WalFile {
            file: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            inner,
            gathered: Vec::new(),
            next: -1,
            commit: false,
        });
        rc
    }
}

/// The WAL file behind `file` (which SQLite only passes to these methods for files opened
/// with them).
///
/// # Safety
/// `file` must be a `WalFile` that [`open_file`] initialized and [`close`] has not dropped.
unsafe fn wal<'f>(file: *mut ffi::sqlite3_file) -> &'f mut WalFile {
    // SAFETY: as the caller promises; SQLite uses a file object from one thread at a time.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// The default VFS's methods of the WAL file.
fn inner_methods(wal: &WalFile) -> &ffi::sqlite3_io_methods {
    // SAFETY: `inner` was opened by the default VFS (its methods are not null, checked in
    // `open_file`) and stays open until `close`.
    unsafe { &*(*wal.inner).pMethods }
}

/// Most bytes the default VFS writes in one call: it writes `n & 0x1ffff` bytes of `n` (it
/// never expects more than a frame), so more is written in pieces of at most this.
const MOST_PER_WRITE: usize = 0x1ffff;

/// Writes what was gathered, if anything, in as few calls as the default VFS takes; forgets it
/// either way (a failed write is SQLite's failed write: it abandons the transaction and writes
/// its frames again when it retries).
fn flush(wal: &mut WalFile) -> c_int {
    let mut rc = ffi::SQLITE_OK;
    // The gathered bytes end where the last write did.
    let mut offset = wal.next - i64::try_from(wal.gathered.len()).unwrap_or(i64::MAX);
    for piece in wal.gathered.chunks(MOST_PER_WRITE) {
        counted_write();
        // At most MOST_PER_WRITE bytes: always a `c_int`.
        let len = c_int::try_from(piece.len()).unwrap_or(c_int::MAX);
        rc = match inner_methods(wal).xWrite {
            // SAFETY: the default VFS's write of bytes we own, on its open file object.
            Some(write) => unsafe {
                write(wal.inner, piece.as_ptr().cast::<c_void>(), len, offset)
            },
            None => ffi::SQLITE_IOERR_WRITE,
        };
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset = offset.saturating_add(i64::from(len));
    }
    wal.gathered.clear();
    rc
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file it opened once, and uses it no more.
    unsafe {
        let wal = wal(file);
        let flushed = flush(wal);
        let closed = match inner_methods(wal).xClose {
            Some(close) => close(wal.inner),
            None => ffi::SQLITE_OK,
        };
        std::ptr::drop_in_place(file.cast::<WalFile>());
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    let (wal, bytes) = unsafe {
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        (
            wal(file),
            std::slice::from_raw_parts(data.cast::<u8>(), len),
        )
    };
    let header = bytes.len() == FRAME_HEADER;
    if header {
        // Bytes 4–7 of a frame header: the database's size in pages after a commit, else 0.
        wal.commit = bytes[4..8] != [0; 4];
    }
    let end = offset.saturating_add(i64::from(amount));
    let continues = offset == wal.next;
    if !continues || wal.gathered.len() + bytes.len() > MOST_GATHERED {
        let rc = flush(wal);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    wal.next = end;
    if !continues {
        // Not the next bytes of the log (SQLite's own header, or a frame written again):
        // written at once, in the order SQLite writes.
        counted_write();
        return match inner_methods(wal).xWrite {
            // SAFETY: the default VFS's write of SQLite's bytes, on its open file object.
            Some(write) => unsafe { write(wal.inner, data, amount, offset) },
            None => ffi::SQLITE_IOERR_WRITE,
        };
    }
    wal.gathered.extend_from_slice(bytes);
    if wal.commit && !header {
        // The commit frame's page (or, with `synchronous = FULL`, its padding): the
        // transaction's frames are complete and go out before SQLite publishes the commit.
        return flush(wal);
    }
    ffi::SQLITE_OK
}

// The default VFS's writes of WAL files on this thread, counted for the tests.
#[cfg(test)]
thread_local! {
    static WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn counted_write() {
    #[cfg(test)]
    WRITES.with(|w| w.set(w.get() + 1));
}

/// Declares a method that writes what was gathered, then does the default VFS's work.
macro_rules! flushed_first {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite calls the methods of files it opened and has not closed.
            let wal = unsafe { wal(file) };
            let rc = flush(wal);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match inner_methods(wal).$method {
                // SAFETY: the default VFS's method on its open file object, with SQLite's
                // arguments.
                Some(method) => unsafe { method(wal.inner $(, $arg)*) },
                None => ffi::SQLITE_ERROR,
            }
        }
    };
}

flushed_first!(read, xRead, (data: *mut c_void, amount: c_int, offset: i64));
flushed_first!(truncate, xTruncate, (size: i64));
flushed_first!(sync, xSync, (flags: c_int));
flushed_first!(file_size, xFileSize, (size: *mut i64));
flushed_first!(lock, xLock, (level: c_int));
flushed_first!(unlock, xUnlock, (level: c_int));
flushed_first!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int));
flushed_first!(file_control, xFileControl, (op: c_int, arg: *mut c_void));

/// Declares a method that only asks the default VFS (nothing written), or says `otherwise`
/// if it has no such method.
macro_rules! asked {
    ($name:ident, $method:ident, $otherwise:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file) -> c_int {
            // SAFETY: as for the methods above.
            let wal = unsafe { wal(file) };
            match inner_methods(wal).$method {
                // SAFETY: the default VFS's method on its open file object.
                Some(method) => unsafe { method(wal.inner) },
                None => $otherwise,
            }
        }
    };
}

asked!(sector_size, xSectorSize, 4096);
asked!(device_characteristics, xDeviceCharacteristics, 0);

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(prefix: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A connection on this VFS to a new database `w.db` in `dir` with a table `t`, in WAL
    /// mode as the writer's, with no automatic checkpoint (so the log keeps every commit) and
    /// the page cache given in pages; the database's path.
    fn writer(dir: &Scratch, cache_pages: u32) -> (rusqlite::Connection, std::path::PathBuf) {
        let path = dir.0.join("w.db");
        let conn = open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA cache_size = {cache_pages}; \
             CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL);"
        ))
        .unwrap();
        (conn, path)
    }

    /// A row's bytes: `len` of them, different for every `id`.
    fn blob(id: i64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64).wrapping_mul(31).wrapping_add(id as u64 * 7919) as u8)
            .collect()
    }

    fn insert(conn: &rusqlite::Connection, ids: std::ops::Range<i64>, len: usize) {
        for id in ids {
            conn.execute("INSERT INTO t (id, b) VALUES (?1, ?2)", (id, blob(id, len)))
                .unwrap();
        }
    }

    /// Every row of `t` read by a connection of the default VFS, checked against what was
    /// inserted; their ids.
    fn rows_checked(path: &std::path::Path, len: usize) -> Vec<i64> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let mut statement = conn.prepare("SELECT id, b FROM t ORDER BY id").unwrap();
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap();
        rows.map(|row| {
            let (id, bytes) = row.unwrap();
            assert!(bytes == blob(id, len), "row {id} does not read as written");
            id
        })
        .collect()
    }

    /// The database and its log as they are on disk now, copied to another directory (what
    /// a crash would leave): SQLite recovers from the copy only the commits whose frames are
    /// all there with valid checksums.
    fn crash_copy(path: &std::path::Path, to: &Scratch) -> std::path::PathBuf {
        let copy = to.0.join("copy.db");
        std::fs::copy(path, &copy).unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut wal_copy = copy.as_os_str().to_owned();
        wal_copy.push("-wal");
        std::fs::copy(&wal, &wal_copy).unwrap();
        copy
    }

    #[test]
    fn a_commit_s_frames_are_written_together_before_other_connections_see_it() {
        let dir = Scratch::new("hookdock-walvfs");
        let (conn, path) = writer(&dir, 2000);
        let wal_len = || std::fs::metadata(dir.0.join("w.db-wal")).unwrap().len();
        // Commits of 20 and of 100 rows (about 80 and 400 KiB of frames).
        let mut stored = 0;
        for rows in [20, 100, 20, 100, 20] {
            let before = wal_len();
            WRITES.with(|w| w.set(0));
            let tx = conn.unchecked_transaction().unwrap();
            insert(&tx, stored..stored + rows, 3000);
            tx.commit().unwrap();
            stored += rows;
            let bytes = wal_len() - before;
            let frames = bytes / (4096 + 24);
            assert!(frames >= rows as u64, "{frames} frames for {rows} rows");
            assert_eq!(
                WRITES.with(|w| w.get()),
                usize::try_from(bytes).unwrap().div_ceil(MOST_PER_WRITE),
                "{frames} frames of {rows} rows in as few writes as the default VFS takes"
            );
            // Visible to another connection, whole, the moment the commit returns.
            assert_eq!(rows_checked(&path, 3000), (0..stored).collect::<Vec<_>>());
        }
        let crashed = Scratch::new("hookdock-walvfs-crash");
        let copy = crash_copy(&path, &crashed);
        assert_eq!(rows_checked(&copy, 3000), (0..stored).collect::<Vec<_>>());
    }

    #[test]
    fn work_rolled_back_is_never_written_over_another_connection_s_commit() {
        let dir = Scratch::new("hookdock-walvfs");
        // A page cache of 16 pages: a transaction of 200 rows of 3000 bytes would spill
        // frames into the log before its end, were spilling on.
        let (conn, path) = writer(&dir, 16);
        insert(&conn, 0..10, 3000);
        // Everything in the database file, the log empty: undoing the transaction below then
        // reads nothing from the log (a read would write out what was gathered in time).
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        insert(&tx, 1000..1200, 3000);
        tx.rollback().unwrap();
        // Another connection commits in the log where the rolled-back frames would have gone.
        let other = rusqlite::Connection::open(&path).unwrap();
        insert(&other, 10..60, 3000);
        drop(other);
        // The writer's next commit, and reads of the log, must not bring those frames back.
        insert(&conn, 60..70, 3000);
        assert_eq!(rows_checked(&path, 3000), (0..70).collect::<Vec<_>>());
        let crashed = Scratch::new("hookdock-walvfs-crash");
        let copy = crash_copy(&path, &crashed);
        assert_eq!(rows_checked(&copy, 3000), (0..70).collect::<Vec<_>>());
    }
}
