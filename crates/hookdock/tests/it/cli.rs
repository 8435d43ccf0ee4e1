//! The `hookdock` binary's commands as a user runs them.

use std::process::{Command, Output};

use reqwest::StatusCode;

use crate::helpers::*;

fn hookdock(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookdock"));
    command
        .args(args)
        .env_clear()
        .current_dir(std::env::temp_dir());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run hookdock")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that an output stream holds `part`, showing the stream when it does not.
#[track_caller]
fn assert_holds(stream: &[u8], part: &str) {
    let stream = text(stream);
    assert!(stream.contains(part), "{part:?} not in: {stream}");
}

/// A new, empty directory of this test's own under the system's temporary directory.
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hookdock-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

#[test]
fn unknown_or_invalid_settings_are_named_at_start_up() {
    let out = hookdock(&["check-config"], &[("HOOKDOCK_LISTN", "127.0.0.1:1")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: configuration: unknown setting `listn` (from environment variable HOOKDOCK_LISTN); \
         see README for the settings hookdock knows\n"
    );

    let out = hookdock(&["serve"], &[("HOOKDOCK_QUEUE__WORKERS", "many")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: configuration: invalid setting `queue.workers` (from environment variable \
         HOOKDOCK_QUEUE__WORKERS): invalid type: found string \"many\", expected usize\n"
    );

    let out = hookdock(&["serve"], &[("HOOKDOCK_ADMIN_TOKEN", "short")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: configuration: invalid setting `admin_token` (from environment variable \
         HOOKDOCK_ADMIN_TOKEN): must be at least 16 characters (use a random token)\n"
    );

    let out = hookdock(&["serve", "--listen", "127.0.0.1:99999"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: configuration: invalid setting `listen` (from command-line flag --listen): \
         invalid socket address syntax\n"
    );

    let dir = scratch_dir();
    let file = dir.join("hookdock.toml");
    std::fs::write(&file, "[retention]\ndone_dayz = 3\n").unwrap();
    let out = hookdock(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: configuration: unknown setting `retention.done_dayz` (in {}); \
             see README for the settings hookdock knows\n",
            file.display()
        )
    );

    let db = format!("sqlite://{}/ok.db", dir.display());
    let out = hookdock(
        &["check-config"],
        &[
            ("HOOKDOCK_DATABASE_URL", &db),
            ("HOOKDOCK_WEBHOOK_SECRET", "s"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("configuration is valid") && !stdout.contains("\"s\""),
        "{stdout}"
    );
    let out = hookdock(&["--database-url", &db, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = hookdock(&["--database-url", &db, "events", "list"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no events stored\n");
    std::fs::remove_dir_all(dir).ok();
}

/// A command run where there is no database (another directory than the server's, a mistyped
/// path) says so, instead of creating an empty database and reporting no events; the check of
/// the configuration says it will be created; `migrate` creates it.
#[test]
fn commands_on_a_database_that_is_not_there_say_so_and_create_nothing() {
    let dir = scratch_dir();
    let in_dir = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookdock"));
        command.args(args).env_clear().current_dir(&dir);
        command.output().expect("run hookdock")
    };
    let relative = format!(
        "error: no hookdock database at hookdock-data/hookdock.db (database_url, relative to \
         the current directory, {}): run this where `hookdock serve` runs, or give its database \
         with --database-url or HOOKDOCK_DATABASE_URL\n",
        dir.display()
    );
    for args in [
        &["events", "list"][..],
        &["events", "show", "1"],
        &["events", "replay", "1"],
        &["purge"],
        &["repos", "list"],
        &["redeliver"],
        &["metrics", "rebuild"],
        &["rotate-key"],
    ] {
        let out = in_dir(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), relative, "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
    let elsewhere = dir.join("elsewhere").join("hookdock.db");
    let url = format!("sqlite://{}", elsewhere.display());
    let out = in_dir(&["--database-url", &url, "events", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: no hookdock database at {} (database_url): run this where `hookdock serve` \
             runs, or give its database with --database-url or HOOKDOCK_DATABASE_URL\n",
            elsewhere.display()
        )
    );
    let out = in_dir(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_holds(
        &out.stdout,
        &format!(
            "  database:        none yet at hookdock-data/hookdock.db (database_url, relative to \
             the current directory, {}); `hookdock serve` or `hookdock migrate` creates it\n",
            dir.display()
        ),
    );
    let created: Vec<_> = std::fs::read_dir(&dir)
        .expect("read the scratch directory")
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .expect("list the scratch directory");
    assert!(created.is_empty(), "created {created:?}");

    let out = in_dir(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.join("hookdock-data").join("hookdock.db").is_file());
    let out = in_dir(&["events", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no events stored\n");
    std::fs::remove_dir_all(&dir).ok();
}

/// The pool waits 10 s for a first connection (a database may be starting), then says why
/// there was none, without the password.
#[test]
fn an_unreachable_database_is_named_with_its_cause() {
    let port = free_port();
    let url = format!("postgres://hookdock:hunter2@127.0.0.1:{port}/hookdock");
    let out = hookdock(&["--database-url", &url, "events", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: opening the database: cannot open database \
             postgres://hookdock:***@127.0.0.1:{port}/hookdock: no connection within 10 s \
             (error communicating with database: Connection refused (os error 111))\n"
        )
    );
}

/// PostgreSQL over TLS, as managed services require it: `sslmode=require` in the URL encrypts
/// every connection hookdock opens, and deliveries are stored as usual; a URL that asks to
/// verify a certificate no trusted root signed (the test server's own) is refused with the
/// cause; trusting it, `verify-ca` connects by an IP address the certificate does not give
/// (libpq's meaning: the certificate is checked, not the host), and `verify-full` refuses it
/// with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_tls_when_the_url_asks() {
    let test = "postgres_connections_use_tls_when_the_url_asks";
    let Some(backend) = Backend::postgres(test) else {
        return;
    };
    let Backend::Postgres(admin_url) = &backend else {
        return;
    };
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(admin_url)
        .await
        .expect("connect to HOOKDOCK_TEST_DATABASE_URL");
    let ssl: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'ssl'")
        .fetch_one(&admin)
        .await
        .expect("read the server's ssl setting");
    if ssl != "on" {
        eprintln!("skipped {test}: the PostgreSQL server has ssl = {ssl}");
        return;
    }
    let db = TestDb::create(&backend).await;
    let name = db.url.rsplit('/').next().unwrap_or_default();
    let name = name.split('?').next().unwrap_or_default().to_owned();
    let joint = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{joint}sslmode=require", db.url);
    let app = TestApp::spawn_on(db, &url).await;
    let delivery = new_delivery_id();
    let (status, answer) = app.post("push", &fixture("push.none.0"), &delivery).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "received");
    let (_, event) = app
        .api_get(&format!("/api/v1/events?delivery_id={delivery}"))
        .await;
    assert_eq!(event["events"].as_array().map(Vec::len), Some(1), "{event}");
    let (encrypted, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
    )
    .bind(&name)
    .fetch_one(&admin)
    .await
    .expect("read the connections' TLS state");
    assert!(all >= 1, "hookdock holds no connection to {name}");
    assert_eq!(encrypted, all, "connections to {name} without TLS");
    app.stop().await;

    let joint = if admin_url.contains('?') { '&' } else { '?' };
    let verify = format!("{admin_url}{joint}sslmode=verify-full");
    let out = hookdock(&["--database-url", &verify, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_holds(
        &out.stderr,
        "error: opening the database: cannot open database ",
    );
    assert_holds(&out.stderr, "sslmode=verify-full: ");
    assert_holds(&out.stderr, "invalid peer certificate");

    // The server's own certificate as the root. It names a host (`localhost` on Debian's
    // PostgreSQL), not the URL's IP address: `verify-ca` checks the certificate only, as libpq
    // does, and connects; `verify-full` also checks the host and refuses, saying what to do.
    let certificate: String =
        sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'ssl_cert_file'")
            .fetch_one(&admin)
            .await
            .expect("read the server's certificate file setting");
    let by_ip = TestDb::create(&backend).await;
    let host = &by_ip.url[by_ip.url.find('@').map_or(0, |i| i + 1)..];
    if std::path::Path::new(&certificate).is_file() && host.starts_with("127.0.0.1") {
        let joint = if by_ip.url.contains('?') { '&' } else { '?' };
        let root = format!("sslrootcert={certificate}");
        let verify_ca = format!("{}{joint}sslmode=verify-ca&{root}", by_ip.url);
        let out = hookdock(&["--database-url", &verify_ca, "migrate"], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let migrated = sqlx::AnyPool::connect(&by_ip.url)
            .await
            .expect("connect to the test database");
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'events'",
        )
        .fetch_one(&migrated)
        .await
        .expect("look for the migrated events table");
        migrated.close().await;
        assert_eq!(
            tables, 1,
            "verify-ca by IP address did not migrate the database"
        );

        let verify_full = format!("{}{joint}sslmode=verify-full&{root}", by_ip.url);
        let out = hookdock(&["--database-url", &verify_full, "migrate"], &[]);
        assert_eq!(out.status.code(), Some(1));
        assert_holds(&out.stderr, "certificate not valid for name \"127.0.0.1\"");
        assert_holds(
            &out.stderr,
            "sslmode=verify-full checks that the certificate names the URL's host: connect by \
             a name it gives, or use sslmode=verify-ca to check the certificate alone",
        );
    } else {
        eprintln!("{test}: verify-ca by IP address not checked (certificate {certificate})");
    }
    admin.close().await;
}

/// A SQLite database hookdock may not write is refused at once, with the cause and what to
/// check (the pool would otherwise retry for 10 s and blame a slow server).
#[test]
fn a_database_hookdock_cannot_write_is_named_at_once() {
    let dir = scratch_dir();
    let db = dir.join("hookdock.db");
    // An empty file is an empty database; opened read-only (root ignores file permissions),
    // it cannot be switched to write-ahead logging, as a file the user may not write cannot.
    std::fs::write(&db, b"").expect("create the database file");
    let read_only = format!("sqlite://{}?mode=ro", db.display());
    let out = hookdock(&["--database-url", &read_only, "events", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: opening the database: cannot open database {read_only}: error returned from \
             database: (code: 8) attempt to write a readonly database; hookdock must be able to \
             write the database file and to create files beside it (its -wal and -shm): check \
             the permissions of both\n"
        )
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A database migrated by a newer hookdock (a migration this build does not have) is refused
/// with what happened and what to do, by `migrate` and `serve` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_hookdock_is_refused_with_what_to_do() {
    let dir = scratch_dir();
    let url = format!("sqlite://{}", dir.join("hookdock.db").display());
    let out = hookdock(&["--database-url", &url, "migrate"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the database");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from a newer hookdock', 1, x'00', 1)",
    )
    .execute(&pool)
    .await
    .expect("record a migration from the future");
    pool.close().await;
    let refusal = "database migration failed: the database has migration 9999, which this \
                   hookdock does not know: a newer hookdock has migrated it; run that version \
                   (or restore a backup taken before the upgrade)\n";
    let out = hookdock(&["--database-url", &url, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).ends_with(refusal),
        "{}",
        text(&out.stderr)
    );
    let out = hookdock(
        &["--database-url", &url, "serve", "--listen", "127.0.0.1:0"],
        &[("HOOKDOCK_WEBHOOK_SECRET", SECRET)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).ends_with(refusal),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `hookdock … | head`: the reader of the output may go away before all of it is written; the
/// command then ends quietly with success (it panicked: "failed printing to stdout: Broken
/// pipe", status 101). Any other failure to write is an error that says so.
#[test]
fn output_into_a_closed_pipe_ends_quietly_and_a_full_disk_is_an_error() {
    let dir = scratch_dir();
    let db = format!("sqlite://{}/hookdock.db", dir.display());
    let command = |stdout: std::process::Stdio| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookdock"));
        command
            .arg("check-config")
            .env_clear()
            .env("HOOKDOCK_DATABASE_URL", &db)
            .env("HOOKDOCK_WEBHOOK_SECRET", "s")
            .current_dir(&dir)
            .stdout(stdout)
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut child = command(std::process::Stdio::piped())
        .spawn()
        .expect("run hookdock");
    // The reader goes away before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for hookdock");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );

    let full = std::fs::File::create("/dev/full").expect("open /dev/full");
    let out = command(full.into()).output().expect("run hookdock");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_holds(
        &out.stderr,
        "error: writing to stdout: No space left on device",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `serve` warns at start when `max_connections` leaves fewer than 128 of the process's open
/// files for the database and GitHub calls, in the real binary's log: under `ulimit -n 600`
/// the default 512 leaves 88 and both numbers are named; under 1024 nothing is said.
#[tokio::test]
async fn serve_warns_when_max_connections_leaves_too_few_open_files() {
    let client = reqwest::Client::new();
    for (open_files, warned) in [(600, true), (1024, false)] {
        let dir = scratch_dir();
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).expect("create the log file");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = tokio::process::Command::new("sh");
        command
            .args([
                "-c",
                &format!("ulimit -n {open_files} && exec \"$0\" serve"),
            ])
            .arg(env!("CARGO_BIN_EXE_hookdock"))
            .env_clear()
            .env("HOOKDOCK_LISTEN", &listen)
            .env(
                "HOOKDOCK_DATABASE_URL",
                format!("sqlite://{}/hookdock.db", dir.display()),
            )
            .env("HOOKDOCK_WEBHOOK_SECRET", SECRET)
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .kill_on_drop(true);
        if let Ok(path) = std::env::var("PATH") {
            command.env("PATH", path);
        }
        let mut child = command.spawn().expect("start hookdock under sh");
        // The warning is logged before the first connection is accepted.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = child.try_wait().expect("check the child") {
                panic!("hookdock exited at start-up with {status}:\n{}", log_text());
            }
            let health = client.get(format!("http://{listen}/healthz")).send().await;
            if health.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hookdock did not answer /healthz within 20 s:\n{}",
                log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        child.kill().await.expect("stop hookdock");
        let logged = std::fs::read_to_string(&log).expect("read the log");
        let warning = format!(
            "max_connections (512) leaves {} of the process's {open_files} open files (ulimit -n) \
             for the database and GitHub calls, which need about 128: lower max_connections or \
             raise the limit",
            open_files - 512
        );
        assert_eq!(
            logged.contains(&warning),
            warned,
            "{warning:?} in:\n{logged}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_taken_address_is_named_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = scratch_dir();
    let db = format!("sqlite://{}/hookdock.db", dir.display());
    let out = hookdock(
        &["serve", "--listen", &addr.to_string()],
        &[("HOOKDOCK_DATABASE_URL", &db)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(
        err.lines().last(),
        Some(
            format!(
                "error: starting hookdock: cannot listen on {addr}: Address already in use \
                 (os error 98) (set --listen or HOOKDOCK_LISTEN to a free address)"
            )
            .as_str()
        ),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Without a token (and without `gh` to ask for one) a GitHub command says what to set.
#[test]
fn a_github_command_without_a_token_says_how_to_get_one() {
    let dir = scratch_dir();
    let db = format!("sqlite://{}/hookdock.db", dir.display());
    let out = hookdock(&["--database-url", &db, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = hookdock(
        &["--database-url", &db, "redeliver", "--since", "24h"],
        &[("PATH", dir.to_str().expect("a UTF-8 path"))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "error: no GitHub token: set HOOKDOCK_GITHUB_TOKEN (a classic token with the \
         admin:repo_hook and repo scopes, admin:org_hook for organizations, or a fine-grained \
         token with Webhooks read and write), or sign in: `gh auth login` for the CLI, \
         /auth/github/login for the API\n"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn send_to_nothing_says_what_failed_once() {
    let url = format!("http://127.0.0.1:{}/api/v1/webhooks/github", free_port());
    let out = hookdock(
        &[
            "send",
            "--url",
            &url,
            "--secret",
            "s",
            "--event",
            "ping",
            "--fixture",
            "ping",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: request to {url} failed: error sending request: "
        )) && err.contains("Connection refused")
            && err.matches(&url).count() == 1
            && err.matches("error sending request").count() == 1,
        "{err}"
    );
    // A URL that is not one is refused before anything is sent, saying what to give.
    for bad in ["127.0.0.1:3000", "ftp://host/hook"] {
        let out = hookdock(&["send", "--url", bad, "--fixture", "ping"], &[]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert_holds(
            &out.stderr,
            &format!(
                "invalid value '{bad}' for '--url <URL>': give an absolute http(s) URL, e.g. \
                 http://127.0.0.1:3000/api/v1/webhooks/github"
            ),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_then_list_show_and_replay_from_the_command_line() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let url = app.webhook_url();
    let db = app.settings.database_url.clone();
    let run = move |args: Vec<String>| {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            hookdock(&args, &[("HOOKDOCK_DATABASE_URL", &db)])
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // `hookdock send` of the pull request fixture under the delivery id `id`.
    let send_pull_request = |id: &str| {
        run(args(&[
            "send",
            "--url",
            &url,
            "--secret",
            SECRET,
            "--fixture",
            "pull_request.opened",
            "--delivery-id",
            id,
        ]))
    };
    let out = send_pull_request("cli-1").await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("delivery cli-1 (pull_request) -> HTTP 200")
            && stdout.contains("\"received\""),
        "{stdout}"
    );

    // The same bytes under a new delivery id: stored, but held by the replay guard (README's
    // quick start).
    let out = send_pull_request("cli-2").await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("delivery cli-2 (pull_request) -> HTTP 200")
            && stdout.contains("\"held\":\"replay_suspected\""),
        "{stdout}"
    );

    let out = run(args(&[
        "send",
        "--url",
        &url,
        "--secret",
        "wrong",
        "--fixture",
        "push",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_holds(&out.stdout, "HTTP 403");

    let payload = std::env::temp_dir().join(format!(
        "hookdock-cli-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&payload, fixture("issues.opened.0")).unwrap();
    let out = run(args(&[
        "send",
        "--url",
        &url,
        "--secret",
        SECRET,
        "--event",
        "issues",
        "--file",
        payload.to_str().unwrap(),
        "--form",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    std::fs::remove_file(&payload).ok();
    app.wait_until_idle().await;

    let out = run(args(&["events", "list"])).await.unwrap();
    let listing = text(&out.stdout);
    assert!(
        listing.contains("cli-1")
            && listing.contains("pull_request.opened")
            && listing.contains("issues.opened"),
        "{listing}"
    );
    // Pages: three events, so a page of two points at the rest and a page of three does not.
    let page = |limit: &'static str| {
        let run = run.clone();
        async move {
            let out = run(args(&["events", "list", "--limit", limit]))
                .await
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            text(&out.stdout)
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        }
    };
    let two = page("2").await;
    assert_eq!(two.len(), 3, "{two:?}");
    let second_id = two[1].split_whitespace().next().unwrap();
    assert_eq!(two[2], format!("(more: --before {second_id})"));
    let three = page("3").await;
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(!three.iter().any(|l| l.starts_with("(more")), "{three:?}");
    let out = run(args(&["events", "list", "--status", "dead"]))
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "no events match these filters\n");
    let out = run(args(&["events", "list", "--limit", "0"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_holds(&out.stderr, "0 is not in 1..=10000");

    let id = app
        .store
        .list_events(&hookdock::store::EventFilter {
            delivery_id: Some("cli-1".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id;
    let out = run(args(&["events", "show", &id.to_string(), "--payload"]))
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        fixture("pull_request.opened.0"),
        "payload printed byte for byte"
    );

    let out = run(args(&["events", "replay", &id.to_string()]))
        .await
        .unwrap();
    assert_holds(&out.stdout, "queued [activity, metrics]");
    app.wait_until_idle().await;
    let handled: i64 = app
        .store
        .activity()
        .await
        .unwrap()
        .iter()
        .map(|a| a.events_handled)
        .sum();
    assert_eq!(
        handled, 3,
        "two deliveries plus one replay; the held one runs nothing"
    );

    let out = run(args(&["events", "release", &id.to_string()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_holds(&out.stderr, "not replay_suspected");
    app.stop().await;
}

/// `events replay ID --dry-run` runs the automations against GitHub's state, prints what they
/// would write, and writes nothing; without a GitHub token it says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_dry_run_prints_the_writes_it_would_make() {
    const GH_TOKEN: &str = "ghp_clidryrun0123456789abcdefghijklmnopq";
    let github = hookdock_testkit::FakeGitHub::start().await;
    github.add_token(GH_TOKEN, "hookdock-bot", &["repo"]);
    github.add_repo("Codertocat", "Hello-World");
    let api = github.url();
    // No workers: the event stays as received, so only the dry run acts on it.
    let app = TestApp::spawn_with(
        &Backend::Sqlite,
        |s| {
            s.set("queue.workers", 0)
                .set("github_api_url", api.clone())
                .set("github_token", GH_TOKEN)
                .set("handlers.automations.enabled", true)
        },
        Vec::new(),
    )
    .await;
    let mut issue: serde_json::Value =
        serde_json::from_slice(&fixture("issues.opened.0")).expect("fixture");
    issue["issue"]["title"] = serde_json::json!("App crashes on start");
    // The fake GitHub knows issue 1 (as the issue of a pull request: it has no bare issues).
    github.add_pull(
        "Codertocat",
        "Hello-World",
        serde_json::json!({
            "number": 1, "title": "App crashes on start", "user": issue["issue"]["user"].clone(),
            "state": "open", "id": 444_000_001u64,
        }),
    );
    let (status, answer) = app
        .post(
            "issues",
            &serde_json::to_vec(&issue).unwrap(),
            &new_delivery_id(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["event_id"].as_i64().expect("event id").to_string();
    let db = app.settings.database_url.clone();

    let out = hookdock(
        &["events", "replay", &id, "--dry-run"],
        &[
            ("HOOKDOCK_DATABASE_URL", &db),
            ("HOOKDOCK_GITHUB_API_URL", &api),
            ("HOOKDOCK_GITHUB_TOKEN", GH_TOKEN),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["dry_run"], true);
    let labels = report["automations"]
        .as_array()
        .expect("automations")
        .iter()
        .find(|a| a["automation"] == "issue_labels")
        .expect("issue labels ran");
    assert_eq!(labels["actions"][0]["kind"], "add_labels", "{report}");
    assert_eq!(
        labels["actions"][0]["detail"]["labels"],
        serde_json::json!(["bug"])
    );
    assert_eq!(labels["actions"][0]["dry_run"], true);
    assert!(
        github.labels("Codertocat", "Hello-World", 1).is_empty(),
        "nothing written"
    );
    assert!(
        github.requests().iter().all(|r| r.method == "GET"),
        "a dry run only reads"
    );

    let out = hookdock(
        &["events", "replay", &id, "--dry-run"],
        &[("HOOKDOCK_DATABASE_URL", &db)],
    );
    assert_ne!(out.status.code(), Some(0));
    assert_holds(&out.stderr, "HOOKDOCK_GITHUB_TOKEN");
    app.stop().await;
}
