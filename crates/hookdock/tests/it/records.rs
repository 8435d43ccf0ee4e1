//! Repository records end to end: every push, release, workflow_run, check_run,
//! deployment_status, star, fork and watch fixture posted signed through the webhook endpoint,
//! the stored rows checked value by value against the payloads; CI events out of order; replays
//! that add nothing; the records API with its pages and errors.

use hookdock::handlers::metrics::parse_time;
use hookdock::store::{
    CiRunRecord, DeploymentStatusRecord, PushRecord, RecordFilter, RecordRow, ReleaseRecord,
    SocialCounts, SocialEventRecord, Store,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

const REPO: &str = "Codertocat/Hello-World";
const RECORDED: [&str; 8] = [
    "push",
    "release",
    "workflow_run",
    "check_run",
    "deployment_status",
    "star",
    "fork",
    "watch",
];

backend_tests!(
    every_fixture_is_recorded_value_by_value,
    ci_events_out_of_order_end_in_the_completed_state,
    replays_add_nothing_and_older_events_do_not_overwrite,
    api_pages_newest_first_and_names_its_errors,
);

fn everything() -> RecordFilter {
    RecordFilter {
        repository: None,
        before_id: None,
        limit: 1000,
    }
}

fn doc(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

/// Posts `body` as `event` and returns its event id.
async fn post_body(app: &TestApp, event: &str, body: &[u8]) -> i64 {
    let (status, answer) = app.post(event, body, &new_delivery_id()).await;
    assert_eq!(status, StatusCode::OK, "{event}: {answer}");
    assert_eq!(answer["status"], "received", "{event}: {answer}");
    answer["event_id"].as_i64().expect("event id")
}

async fn post_json(app: &TestApp, event: &str, doc: &Value) -> i64 {
    post_body(app, event, &serde_json::to_vec(doc).expect("serialize")).await
}

/// A time field of a payload as Unix ms.
fn time(v: &Value) -> Option<i64> {
    v.as_str().and_then(parse_time)
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

async fn pushes(store: &Store) -> Vec<RecordRow<PushRecord>> {
    store.pushes(&everything()).await.expect("pushes")
}

async fn releases(store: &Store) -> Vec<RecordRow<ReleaseRecord>> {
    store.releases(&everything()).await.expect("releases")
}

async fn ci_runs(store: &Store) -> Vec<RecordRow<CiRunRecord>> {
    store.ci_runs(&everything()).await.expect("ci runs")
}

async fn deployments(store: &Store) -> Vec<RecordRow<DeploymentStatusRecord>> {
    store
        .deployment_statuses(&everything())
        .await
        .expect("deployments")
}

async fn social(store: &Store) -> Vec<RecordRow<SocialEventRecord>> {
    store.social_events(&everything()).await.expect("social")
}

fn ci_run<'a>(rows: &'a [RecordRow<CiRunRecord>], kind: &str, id: i64) -> &'a CiRunRecord {
    let matching: Vec<_> = rows
        .iter()
        .filter(|r| r.record.kind == kind && r.record.github_id == id)
        .collect();
    assert_eq!(matching.len(), 1, "{kind} {id}: one row");
    &matching[0].record
}

/// A check run row against the check_run payload it must come from.
fn assert_check_run(row: &CiRunRecord, p: &Value, event_id: i64) {
    let c = &p["check_run"];
    let completed = c["status"] == "completed";
    let started = time(&c["started_at"]);
    let completed_at = if completed {
        time(&c["completed_at"])
    } else {
        None
    };
    let expected = CiRunRecord {
        kind: "check_run".into(),
        github_id: c["id"].as_i64().expect("id"),
        repository: p["repository"]["full_name"].as_str().expect("repo").into(),
        name: c["name"].as_str().expect("name").into(),
        head_sha: c["head_sha"].as_str().expect("sha").into(),
        head_branch: text(&c["check_suite"]["head_branch"]),
        status: c["status"].as_str().expect("status").into(),
        conclusion: text(&c["conclusion"]),
        started_at: started,
        completed_at,
        duration_ms: completed_at.map(|end| end - started.expect("started")),
        run_attempt: 1,
        progress: CiRunRecord::progress_of(c["status"].as_str().expect("status")),
        state_at: completed_at.or(started).unwrap_or(0),
        last_event_id: event_id,
    };
    assert_eq!(row, &expected);
}

fn assert_workflow_run(row: &CiRunRecord, p: &Value, event_id: i64) {
    let w = &p["workflow_run"];
    let completed = w["status"] == "completed";
    let started = time(&w["run_started_at"]);
    let completed_at = if completed {
        time(&w["updated_at"])
    } else {
        None
    };
    let expected = CiRunRecord {
        kind: "workflow_run".into(),
        github_id: w["id"].as_i64().expect("id"),
        repository: p["repository"]["full_name"].as_str().expect("repo").into(),
        name: w["name"].as_str().expect("name").into(),
        head_sha: w["head_sha"].as_str().expect("sha").into(),
        head_branch: text(&w["head_branch"]),
        status: w["status"].as_str().expect("status").into(),
        conclusion: text(&w["conclusion"]),
        started_at: started,
        completed_at,
        duration_ms: completed_at.map(|end| end - started.expect("started")),
        run_attempt: w["run_attempt"].as_i64().expect("attempt"),
        progress: CiRunRecord::progress_of(w["status"].as_str().expect("status")),
        state_at: time(&w["updated_at"]).expect("updated_at"),
        last_event_id: event_id,
    };
    assert_eq!(row, &expected);
}

async fn every_fixture_is_recorded_value_by_value(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    // Posted one at a time in name order, so event ids follow that order.
    let mut posted: Vec<(String, String, i64)> = Vec::new();
    for (name, event, bytes) in fixtures() {
        if !RECORDED.contains(&event.as_str()) {
            continue;
        }
        let id = post_body(&app, &event, &bytes).await;
        posted.push((name, event, id));
    }
    assert!(posted.len() >= 35, "only {} fixtures", posted.len());
    app.wait_until_idle().await;
    let id_of = |name: &str| {
        posted
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, id)| *id)
            .unwrap_or_else(|| panic!("{name} was posted"))
    };
    let of_event = |event: &str| -> Vec<(String, i64)> {
        posted
            .iter()
            .filter(|(_, e, _)| e == event)
            .map(|(n, _, id)| (n.clone(), *id))
            .collect()
    };

    // Pushes: one row per delivery, every field from its payload.
    let rows = pushes(&app.store).await;
    assert_eq!(rows.len(), of_event("push").len());
    for (name, event_id) in of_event("push") {
        let p = doc(&name);
        let row = rows
            .iter()
            .find(|r| r.record.event_id == event_id)
            .unwrap_or_else(|| panic!("{name} recorded"));
        let commits = p["commits"].as_array().expect("commits");
        let stored = app.store.event_summary(event_id).await.expect("event");
        let expected = PushRecord {
            event_id,
            repository: p["repository"]["full_name"].as_str().unwrap().into(),
            ref_name: p["ref"].as_str().unwrap().into(),
            before: p["before"].as_str().unwrap().into(),
            after: p["after"].as_str().unwrap().into(),
            commits: commits.len() as i64,
            distinct_commits: commits.iter().filter(|c| c["distinct"] == true).count() as i64,
            forced: p["forced"] == true,
            created: p["created"] == true,
            deleted: p["deleted"] == true,
            pusher: text(&p["pusher"]["name"]),
            head_commit_at: time(&p["head_commit"]["timestamp"]),
            received_at: stored.received_at,
        };
        assert_eq!(row.record, expected, "{name}");
    }
    let created = rows
        .iter()
        .find(|r| r.record.event_id == id_of("push.none.4"))
        .expect("branch push");
    assert_eq!(
        (created.record.commits, created.record.created),
        (1, true),
        "the branch push carries its commit"
    );

    // Releases: one row for GitHub's release id; state from the newest event (the last
    // posted, as every fixture has the same times), and the deletion is final.
    let rows = releases(&app.store).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let last = doc("release.released.0");
    let r = &last["release"];
    let expected = ReleaseRecord {
        github_id: r["id"].as_i64().unwrap(),
        repository: last["repository"]["full_name"].as_str().unwrap().into(),
        tag: r["tag_name"].as_str().unwrap().into(),
        name: text(&r["name"]),
        draft: r["draft"] == true,
        prerelease: r["prerelease"] == true,
        deleted: true,
        last_action: "deleted".into(),
        author: text(&r["author"]["login"]),
        created_at: time(&r["created_at"]),
        published_at: time(&r["published_at"]),
        state_at: time(&r["published_at"]).unwrap(),
        last_event_id: id_of("release.released.0"),
    };
    assert_eq!(rows[0].record, expected);

    // CI runs: one row per (kind, id), in its most advanced state.
    let rows = ci_runs(&app.store).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_check_run(
        ci_run(&rows, "check_run", 128620228),
        &doc("check_run.completed.2"),
        id_of("check_run.completed.2"),
    );
    let completed = ci_run(&rows, "check_run", 128620228);
    assert_eq!(
        (completed.conclusion.as_deref(), completed.duration_ms),
        (Some("success"), Some(0))
    );
    assert_check_run(
        ci_run(&rows, "check_run", 1494503112),
        &doc("check_run.requested_action.0"),
        id_of("check_run.requested_action.0"),
    );
    assert_eq!(ci_run(&rows, "check_run", 1494503112).duration_ms, None);
    assert_check_run(
        ci_run(&rows, "check_run", 4),
        &doc("check_run.rerequested.1"),
        id_of("check_run.rerequested.1"),
    );
    // requested.1 reports `completed` too, but at an older updated_at than completed.*.
    assert_workflow_run(
        ci_run(&rows, "workflow_run", 289782451),
        &doc("workflow_run.completed.2"),
        id_of("workflow_run.completed.2"),
    );
    assert_workflow_run(
        ci_run(&rows, "workflow_run", 1589141559),
        &doc("workflow_run.completed.0"),
        id_of("workflow_run.completed.0"),
    );

    // Deployment statuses: one row per status id; the newest creation wins.
    let rows = deployments(&app.store).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let p = doc("deployment_status.created.1");
    let expected = DeploymentStatusRecord {
        github_id: p["deployment_status"]["id"].as_i64().unwrap(),
        deployment_id: p["deployment"]["id"].as_i64().unwrap(),
        repository: p["repository"]["full_name"].as_str().unwrap().into(),
        environment: p["deployment_status"]["environment"]
            .as_str()
            .unwrap()
            .into(),
        state: p["deployment_status"]["state"].as_str().unwrap().into(),
        sha: text(&p["deployment"]["sha"]),
        ref_name: text(&p["deployment"]["ref"]),
        creator: text(&p["deployment_status"]["creator"]["login"]),
        created_at: time(&p["deployment_status"]["created_at"]).unwrap(),
        last_event_id: id_of("deployment_status.created.1"),
    };
    assert_eq!(rows[0].record, expected);

    // Stars, forks and watches: one log row per delivery, counts as last reported.
    let rows = social(&app.store).await;
    let deliveries: Vec<(String, i64)> = ["star", "fork", "watch"]
        .iter()
        .flat_map(|e| of_event(e))
        .collect();
    assert_eq!(rows.len(), deliveries.len());
    for (name, event_id) in deliveries {
        let p = doc(&name);
        let row = &rows
            .iter()
            .find(|r| r.record.event_id == event_id)
            .unwrap_or_else(|| panic!("{name} recorded"))
            .record;
        let kind = name.split('.').next().unwrap();
        let (action, at) = match kind {
            "fork" => ("created".to_owned(), time(&p["forkee"]["created_at"])),
            "star" => (text(&p["action"]).unwrap(), time(&p["starred_at"])),
            _ => (text(&p["action"]).unwrap(), None),
        };
        let stored = app.store.event_summary(event_id).await.expect("event");
        let received = stored.received_at;
        let expected = SocialEventRecord {
            event_id,
            repository: p["repository"]["full_name"].as_str().unwrap().into(),
            kind: kind.into(),
            action,
            user_login: p["sender"]["login"].as_str().unwrap().into(),
            user_id: p["sender"]["id"].as_i64(),
            fork: text(&p["forkee"]["full_name"]),
            at: at.unwrap_or(received),
        };
        assert_eq!(row, &expected, "{name}");
    }
    // The newest report is star.deleted.0 (latest repository.updated_at, ties to later posts).
    let p = doc("star.deleted.0");
    assert_eq!(
        app.store.social_counts(Some(REPO)).await.expect("counts"),
        [SocialCounts {
            repository: REPO.into(),
            stars: p["repository"]["stargazers_count"].as_i64().unwrap(),
            forks: p["repository"]["forks_count"].as_i64().unwrap(),
            watchers: p["repository"]["watchers_count"].as_i64().unwrap(),
            reported_at: time(&p["repository"]["updated_at"]).unwrap(),
            last_event_id: id_of("star.deleted.0"),
        }]
    );

    // Nothing went dead: every records job succeeded.
    assert_eq!(
        app.store
            .count_events_by_status()
            .await
            .expect("count")
            .get("dead")
            .copied()
            .unwrap_or(0),
        0
    );
    app.stop().await;
}

/// A check_run payload for run `id` in `status` (times in Unix ms).
fn check_run(
    id: i64,
    status: &str,
    conclusion: Option<&str>,
    started: i64,
    completed: Option<i64>,
) -> Value {
    let mut p = doc("check_run.created.0");
    let c = &mut p["check_run"];
    c["id"] = json!(id);
    c["status"] = json!(status);
    c["conclusion"] = json!(conclusion);
    c["started_at"] = json!(hookdock::store::rfc3339(started));
    c["completed_at"] = json!(completed.map(hookdock::store::rfc3339));
    p["action"] = json!(if status == "completed" {
        "completed"
    } else {
        "created"
    });
    p
}

fn workflow_run(id: i64, attempt: i64, status: &str, started: i64, updated: i64) -> Value {
    let mut p = doc("workflow_run.requested.0");
    let w = &mut p["workflow_run"];
    w["id"] = json!(id);
    w["run_attempt"] = json!(attempt);
    w["status"] = json!(status);
    w["conclusion"] = json!((status == "completed").then_some("failure"));
    w["run_started_at"] = json!(hookdock::store::rfc3339(started));
    w["updated_at"] = json!(hookdock::store::rfc3339(updated));
    p
}

async fn ci_events_out_of_order_end_in_the_completed_state(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    const T: i64 = 1_717_200_000_000;
    let queued = check_run(77, "queued", None, T, None);
    let running = check_run(77, "in_progress", None, T, None);
    let done = check_run(77, "completed", Some("failure"), T, Some(T + 93_250));
    // Completed first, then the earlier states: each handled before the next arrives.
    let done_id = post_json(&app, "check_run", &done).await;
    app.wait_until_idle().await;
    for p in [&running, &queued] {
        post_json(&app, "check_run", p).await;
        app.wait_until_idle().await;
    }
    let rows = ci_runs(&app.store).await;
    let row = ci_run(&rows, "check_run", 77);
    assert_check_run(row, &done, done_id);
    assert_eq!(
        (
            row.status.as_str(),
            row.conclusion.as_deref(),
            row.duration_ms
        ),
        ("completed", Some("failure"), Some(93_250))
    );

    // In order it ends the same way, and in progress has no duration.
    let running_id = post_json(
        &app,
        "check_run",
        &check_run(78, "in_progress", None, T, None),
    )
    .await;
    app.wait_until_idle().await;
    let rows = ci_runs(&app.store).await;
    assert_eq!(ci_run(&rows, "check_run", 78).duration_ms, None);
    assert_eq!(ci_run(&rows, "check_run", 78).last_event_id, running_id);
    let done_id = post_json(
        &app,
        "check_run",
        &check_run(78, "completed", Some("success"), T, Some(T + 1_500)),
    )
    .await;
    app.wait_until_idle().await;
    let rows = ci_runs(&app.store).await;
    let row = ci_run(&rows, "check_run", 78);
    assert_eq!(
        (
            row.conclusion.as_deref(),
            row.duration_ms,
            row.last_event_id
        ),
        (Some("success"), Some(1_500), done_id)
    );

    // A workflow run: completed, then a late in_progress of the same attempt; a re-run
    // (attempt 2) starts over even though its in_progress follows the completion.
    let done = workflow_run(9, 1, "completed", T, T + 60_000);
    let done_id = post_json(&app, "workflow_run", &done).await;
    app.wait_until_idle().await;
    post_json(
        &app,
        "workflow_run",
        &workflow_run(9, 1, "in_progress", T, T + 5_000),
    )
    .await;
    app.wait_until_idle().await;
    let rows = ci_runs(&app.store).await;
    assert_workflow_run(ci_run(&rows, "workflow_run", 9), &done, done_id);
    assert_eq!(ci_run(&rows, "workflow_run", 9).duration_ms, Some(60_000));
    let rerun = workflow_run(9, 2, "in_progress", T + 120_000, T + 120_000);
    let rerun_id = post_json(&app, "workflow_run", &rerun).await;
    app.wait_until_idle().await;
    let rows = ci_runs(&app.store).await;
    let row = ci_run(&rows, "workflow_run", 9);
    assert_workflow_run(row, &rerun, rerun_id);
    assert_eq!((row.run_attempt, row.duration_ms), (2, None));
    app.stop().await;
}

async fn replay(app: &TestApp, id: i64) {
    let (status, report) = app.api_post(&format!("/api/v1/events/{id}/replay")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        report["queued"]
            .as_array()
            .is_some_and(|q| q.iter().any(|h| h == "records")),
        "{report}"
    );
}

async fn replays_add_nothing_and_older_events_do_not_overwrite(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut ids = Vec::new();
    for name in [
        "push.none.4",
        "star.created.0",
        "fork.none.0",
        "watch.started.1",
        "check_run.completed.1",
        "deployment_status.created.0",
        "release.published.0",
        "release.prereleased.0",
    ] {
        let event = name.split('.').next().unwrap();
        ids.push(post_body(&app, event, &fixture(name)).await);
    }
    app.wait_until_idle().await;
    let before = (
        pushes(&app.store).await,
        releases(&app.store).await,
        ci_runs(&app.store).await,
        deployments(&app.store).await,
        social(&app.store).await,
        app.store.social_counts(None).await.expect("counts"),
    );
    assert_eq!(
        (
            before.0.len(),
            before.1.len(),
            before.2.len(),
            before.3.len(),
            before.4.len(),
            before.5.len()
        ),
        (1, 1, 1, 1, 3, 1)
    );
    assert_eq!(before.1[0].record.last_action, "prereleased");
    assert!(before.1[0].record.prerelease);

    // Every event again, oldest first: the release's older `published` event must not
    // overwrite the newer `prereleased` state.
    for id in &ids {
        replay(&app, *id).await;
    }
    app.wait_until_idle().await;
    let after = (
        pushes(&app.store).await,
        releases(&app.store).await,
        ci_runs(&app.store).await,
        deployments(&app.store).await,
        social(&app.store).await,
        app.store.social_counts(None).await.expect("counts"),
    );
    assert_eq!(after, before);
    // The replays did run: the activity handler counted every event twice.
    let handled: i64 = app
        .store
        .activity()
        .await
        .expect("activity")
        .iter()
        .map(|a| a.events_handled)
        .sum();
    assert_eq!(handled, 2 * ids.len() as i64);
    app.stop().await;
}

async fn api_pages_newest_first_and_names_its_errors(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    assert!(app.settings.handlers.records.enabled);
    for event in RECORDED {
        assert!(
            app.settings.hooks.events.iter().any(|e| e == event),
            "managed hooks subscribe to {event}"
        );
    }
    let mut push_ids = Vec::new();
    for name in [
        "push.none.0",
        "push.none.1",
        "push.none.2",
        "push.none.3",
        "push.none.4",
        "push.none.6",
    ] {
        push_ids.push(post_body(&app, "push", &fixture(name)).await);
    }
    post_body(&app, "check_run", &fixture("check_run.completed.1")).await;
    post_body(&app, "star", &fixture("star.created.0")).await;
    post_body(&app, "release", &fixture("release.published.1")).await;
    post_body(
        &app,
        "deployment_status",
        &fixture("deployment_status.created.0"),
    )
    .await;
    let mut other = doc("push.none.4");
    other["repository"]["full_name"] = json!("octo-org/other");
    let other_id = post_json(&app, "push", &other).await;
    app.wait_until_idle().await;

    // Two pages of one repository's pushes, newest first.
    let path = format!("/api/v1/records/pushes?repo={REPO}&limit=4");
    let (status, first) = app.api_get(&path).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let page: Vec<i64> = first["pushes"]
        .as_array()
        .expect("pushes")
        .iter()
        .map(|r| r["event_id"].as_i64().expect("event_id"))
        .collect();
    let newest: Vec<i64> = push_ids.iter().rev().copied().collect();
    assert_eq!(page, newest[..4]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (status, second) = app.api_get(&format!("{path}&cursor={cursor}")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let page: Vec<i64> = second["pushes"]
        .as_array()
        .expect("pushes")
        .iter()
        .map(|r| r["event_id"].as_i64().expect("event_id"))
        .collect();
    assert_eq!(page, newest[4..]);
    assert_eq!(second["next_cursor"], Value::Null);

    // One row as JSON, every field.
    let (_, all) = app.api_get("/api/v1/records/pushes").await;
    assert_eq!(all["pushes"].as_array().map(Vec::len), Some(7));
    assert_eq!(all["pushes"][0]["event_id"], other_id);
    assert_eq!(all["pushes"][0]["repository"], "octo-org/other");
    let row = &first["pushes"][0];
    let p = doc("push.none.6");
    assert_eq!(row["ref"], p["ref"]);
    assert_eq!(row["before"], p["before"]);
    assert_eq!(row["after"], p["after"]);
    assert_eq!(row["commits"], 0);
    assert_eq!(row["distinct_commits"], 0);
    assert_eq!(row["forced"], false);
    assert_eq!(row["created"], false);
    assert_eq!(row["deleted"], true);
    assert_eq!(row["pusher"], p["pusher"]["name"]);
    assert_eq!(row["head_commit_at"], Value::Null);
    assert!(
        row["received_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let (_, branch) = app
        .api_get(&format!("/api/v1/records/pushes?repo={REPO}&limit=2"))
        .await;
    assert_eq!(
        branch["pushes"][1]["head_commit_at"],
        "2019-05-15T15:19:25.000Z"
    );

    let (status, body) = app.api_get("/api/v1/records/ci_runs").await;
    assert_eq!(status, StatusCode::OK);
    let run = &body["ci_runs"][0];
    assert_eq!(run["kind"], "check_run");
    assert_eq!(run["github_id"], 128620228);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["conclusion"], "success");
    assert_eq!(run["started_at"], "2019-05-15T15:21:12.000Z");
    assert_eq!(run["completed_at"], "2019-05-15T15:21:12.000Z");
    assert_eq!(run["duration_ms"], 0);
    assert_eq!(run["head_branch"], "changes");

    let (_, body) = app.api_get("/api/v1/records/releases").await;
    assert_eq!(body["releases"][0]["tag"], "0.0.1");
    assert_eq!(body["releases"][0]["last_action"], "published");
    assert_eq!(
        body["releases"][0]["published_at"],
        "2019-05-15T15:20:53.000Z"
    );

    let (_, body) = app
        .api_get(&format!("/api/v1/records/deployments?repo={REPO}"))
        .await;
    assert_eq!(body["deployments"][0]["github_id"], 209916254);
    assert_eq!(body["deployments"][0]["environment"], "production");
    assert_eq!(body["deployments"][0]["state"], "success");
    assert_eq!(body["deployments"][0]["creator"], "Codertocat");

    let (_, body) = app
        .api_get(&format!("/api/v1/records/stars?repo={REPO}"))
        .await;
    assert_eq!(body["stars"][0]["kind"], "star");
    assert_eq!(body["stars"][0]["action"], "created");
    assert_eq!(body["stars"][0]["user_login"], "Codertocat");
    assert_eq!(body["stars"][0]["at"], "2019-05-15T15:20:40.000Z");
    assert_eq!(body["counts"][0]["repository"], REPO);
    assert_eq!(body["counts"][0]["stars"], 1);
    assert_eq!(body["counts"][0]["watchers"], 1);
    assert_eq!(body["next_cursor"], Value::Null);

    let (_, body) = app
        .api_get("/api/v1/records/stars?repo=octo-org/other")
        .await;
    assert_eq!(body["stars"], json!([]));
    assert_eq!(body["counts"], json!([]));

    // Errors: unknown kind, bad parameters, no token.
    let (status, body) = app.api_get("/api/v1/records/commits").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "unknown_kind");
    let message = body["message"].as_str().expect("message");
    for kind in ["pushes", "releases", "ci_runs", "deployments", "stars"] {
        assert!(message.contains(kind), "{message}");
    }
    for (query, needle) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=e5", "cursor"),
        ("repo=no-slash", "repo"),
        ("sort=asc", "sort"),
    ] {
        let (status, body) = app
            .api_get(&format!("/api/v1/records/pushes?{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{query}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(needle)),
            "{query}: {body}"
        );
    }
    let response = app
        .client
        .get(format!("{}/api/v1/records/pushes", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}
