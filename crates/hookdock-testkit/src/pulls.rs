//! Pull requests: get (also as a diff), list, files, commits, reviews and review comments, with
//! the check that review comments sit on lines of the diff. It owns those endpoints, the storing
//! of a pull request with its issue ([`add_pull`]) and its commits ([`set_commits`]); issue
//! comments, events, labels and the like belong to [`crate::issues`] (only the listing of issue
//! comments shares the listing code here).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::issues::{NewIssue, issue_json};
use crate::server::{Body, Ctx, Reply, Scope, paginate};
use crate::state::{FakeCommit, Item, State, example, localize, timestamp};

/// Most files the files API lists for one pull request.
const MAX_FILES: usize = 3000;
/// Most commits the commits API lists for one pull request (GitHub's limit).
const MAX_COMMITS: usize = 250;
/// Most commits made up for a pull request added without any.
const MAX_DEFAULT_COMMITS: u64 = 300;

/// Lines a review comment may be placed on, from a unified-diff `patch`: `(RIGHT, LEFT)` sets.
pub(crate) fn commentable_lines(patch: &str) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut right, mut left) = (BTreeSet::new(), BTreeSet::new());
    let (mut old, mut new) = (0u64, 0u64);
    for line in patch.lines() {
        if let Some(header) = line.strip_prefix("@@ ") {
            let mut parts = header.split_whitespace();
            let start = |s: Option<&str>, sign: char| -> u64 {
                s.and_then(|s| s.strip_prefix(sign))
                    .and_then(|s| s.split(',').next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            };
            old = start(parts.next(), '-');
            new = start(parts.next(), '+');
            continue;
        }
        match line.chars().next() {
            Some('+') => {
                right.insert(new);
                new += 1;
            }
            Some('-') => {
                left.insert(old);
                old += 1;
            }
            Some('\\') => {}
            _ => {
                right.insert(new);
                left.insert(old);
                new += 1;
                old += 1;
            }
        }
    }
    (right, left)
}

/// Stores a pull request and the issue GitHub keeps beside it.
pub(crate) fn add_pull(st: &mut State, owner: &str, repo: &str, mut pull: Value) {
    let mut new = NewIssue::build(st, owner, repo, &pull, &[]);
    let (full, number, base) = (new.full.clone(), new.number, st.base_url.clone());
    let key = new.key.clone();
    new.issue["id"] = json!(pull["id"].as_u64().unwrap_or(number) + 1_000_000);
    new.issue["html_url"] = json!(format!("https://github.com/{full}/pull/{number}"));
    new.issue["pull_request"] = json!({
        "url": format!("{base}/repos/{full}/pulls/{number}"),
        "html_url": format!("https://github.com/{full}/pull/{number}"),
        "diff_url": format!("https://github.com/{full}/pull/{number}.diff"),
        "patch_url": format!("https://github.com/{full}/pull/{number}.patch"),
        "merged_at": pull.get("merged_at").cloned().unwrap_or(Value::Null),
    });
    // `reduced` webhook pull requests lack what the REST object always has.
    for (field, default) in [
        ("merged", json!(false)),
        ("mergeable", Value::Null),
        ("rebaseable", Value::Null),
        ("mergeable_state", json!("unknown")),
        ("merged_by", Value::Null),
        ("comments", json!(0)),
        ("review_comments", json!(0)),
        ("maintainer_can_modify", json!(false)),
        ("commits", json!(1)),
        ("additions", json!(0)),
        ("deletions", json!(0)),
        ("changed_files", json!(0)),
    ] {
        if pull.get(field).is_none() {
            pull[field] = default;
        }
    }
    crate::state::complete("pulls/get", 200, &mut pull);
    new.store(st);
    st.pull_commits
        .entry((key.clone(), number))
        .or_insert_with(|| default_commits(&key, number, &pull));
    st.pulls.insert((key, number), pull);
}

/// The commits of a pull request added without any: as many as its `commits` says (at least
/// one), by its author, written one hour apart, the last one an hour before the pull request
/// was opened and being its head.
fn default_commits(key: &str, number: u64, pull: &Value) -> Vec<FakeCommit> {
    let n = pull["commits"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, MAX_DEFAULT_COMMITS);
    let created = pull["created_at"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let author = pull["user"]["login"].as_str().unwrap_or("octocat");
    let head = pull["head"]["sha"].as_str().map(str::to_owned);
    (0..n)
        .map(|i| {
            let sha = match (&head, i + 1 == n) {
                (Some(head), true) => head.clone(),
                _ => hex::encode(Sha1::digest(format!("{key}#{number}/{i}"))),
            };
            let hours_before = i64::try_from(n - i).unwrap_or(i64::MAX);
            FakeCommit::new(&sha, author, created - time::Duration::hours(hours_before))
        })
        .collect()
}

/// Replaces a pull request's commits (oldest first), as a push does: its `commits` count and
/// head follow. `false` when there is no such pull request.
pub(crate) fn set_commits(
    st: &mut State,
    key: &str,
    number: u64,
    commits: Vec<FakeCommit>,
) -> bool {
    let Some(pull) = st.pulls.get_mut(&(key.to_owned(), number)) else {
        return false;
    };
    pull["commits"] = json!(commits.len());
    if let Some(last) = commits.last() {
        pull["head"]["sha"] = json!(last.sha);
    }
    st.pull_commits.insert((key.to_owned(), number), commits);
    true
}

/// GitHub's `commit` object as the commits API of a pull request lists it.
fn commit_json(st: &mut State, full: &str, commit: &FakeCommit, parent: Option<&str>) -> Value {
    let base = st.base_url.clone();
    let sha = &commit.sha;
    let user = st.user_json(&commit.author);
    let person = |at: OffsetDateTime| {
        json!({
            "name": commit.author,
            "email": format!("{}@users.noreply.github.com", commit.author),
            "date": timestamp(at),
        })
    };
    let tree = hex::encode(Sha1::digest(format!("tree {sha}")));
    json!({
        "url": format!("{base}/repos/{full}/commits/{sha}"),
        "sha": sha,
        "node_id": format!("C_fake{}", &sha[..sha.len().min(12)]),
        "html_url": format!("https://github.com/{full}/commit/{sha}"),
        "comments_url": format!("{base}/repos/{full}/commits/{sha}/comments"),
        "commit": {
            "url": format!("{base}/repos/{full}/git/commits/{sha}"),
            "author": person(commit.authored_at),
            "committer": person(commit.committed_at),
            "message": commit.message,
            "tree": {"url": format!("{base}/repos/{full}/git/trees/{tree}"), "sha": tree},
            "comment_count": 0,
            "verification": {
                "verified": false,
                "reason": "unsigned",
                "signature": null,
                "payload": null,
                "verified_at": null,
            },
        },
        "author": user,
        "committer": user,
        "parents": parent
            .map(|p| vec![json!({
                "url": format!("{base}/repos/{full}/commits/{p}"),
                "html_url": format!("https://github.com/{full}/commit/{p}"),
                "sha": p,
            })])
            .unwrap_or_default(),
    })
}

/// Answers the pull request operations; `None` for others.
pub(crate) fn handle(ctx: &mut Ctx) -> Option<Reply> {
    let Scope {
        key,
        full,
        base,
        now,
        number,
        per_page,
        page,
    } = ctx.scope();
    let reply = match ctx.operation_id {
        "pulls/get" => {
            let Some(mut pull) = ctx.st.pulls.get(&(key.clone(), number)).cloned() else {
                return Some(Reply::not_found());
            };
            let accept = ctx
                .headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("diff") || accept.contains("patch") {
                let files = ctx
                    .st
                    .pull_files
                    .get(&(key, number))
                    .cloned()
                    .unwrap_or_default();
                let lines: usize = files
                    .iter()
                    .filter_map(|f| f["patch"].as_str())
                    .map(|p| p.lines().count())
                    .sum();
                if files.len() > 300 || lines > 20_000 {
                    return Some(Reply::json(
                        406,
                        json!({
                            "message": "Sorry, the diff exceeded the maximum number of files (300). Consider using 'List pull requests files' API or locally cloning the repository instead.",
                            "errors": [{"resource": "PullRequest", "field": "diff", "code": "too_large"}],
                            "documentation_url": "https://docs.github.com/rest/pulls/pulls#list-pull-requests-files",
                            "status": "406"
                        }),
                    ));
                }
                let mut diff = String::new();
                for f in &files {
                    let name = f["filename"].as_str().unwrap_or_default();
                    let old = f["previous_filename"].as_str().unwrap_or(name);
                    diff.push_str(&format!(
                        "diff --git a/{old} b/{name}\n--- a/{old}\n+++ b/{name}\n"
                    ));
                    if let Some(p) = f["patch"].as_str() {
                        diff.push_str(p);
                        diff.push('\n');
                    }
                }
                return Some(Reply {
                    status: 200,
                    headers: Vec::new(),
                    body: Body::Raw {
                        content_type: "application/vnd.github.diff; charset=utf-8".into(),
                        bytes: diff.into_bytes(),
                    },
                });
            }
            if let Some(issue) = issue_json(ctx.st, &key, number) {
                pull["labels"] = issue["labels"].clone();
            }
            Reply::json(200, pull)
        }
        "pulls/list" => {
            let state = ctx.query("state").unwrap_or("open").to_owned();
            let pulls: Vec<Value> = ctx
                .st
                .pulls
                .iter()
                .filter(|((k, _), p)| {
                    *k == key && (state == "all" || p["state"].as_str() == Some(state.as_str()))
                })
                .map(|(_, p)| p.clone())
                .rev()
                .collect();
            paginate(
                ctx,
                &format!("/repos/{full}/pulls"),
                pulls,
                per_page,
                page,
                |_, p| p,
            )
        }
        "pulls/list-files" => {
            if !ctx.st.pulls.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let mut files = ctx
                .st
                .pull_files
                .get(&(key, number))
                .cloned()
                .unwrap_or_default();
            files.truncate(MAX_FILES);
            paginate(
                ctx,
                &format!("/repos/{full}/pulls/{number}/files"),
                files,
                per_page,
                page,
                |_, f| f,
            )
        }
        "pulls/list-commits" => {
            if !ctx.st.pulls.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let mut commits = ctx
                .st
                .pull_commits
                .get(&(key, number))
                .cloned()
                .unwrap_or_default();
            commits.truncate(MAX_COMMITS);
            let parents: Vec<Option<String>> = std::iter::once(None)
                .chain(commits.iter().map(|c| Some(c.sha.clone())))
                .collect();
            let numbered: Vec<(FakeCommit, Option<String>)> =
                commits.into_iter().zip(parents).collect();
            paginate(
                ctx,
                &format!("/repos/{full}/pulls/{number}/commits"),
                numbered,
                per_page,
                page,
                |st, (c, parent)| commit_json(st, &full, &c, parent.as_deref()),
            )
        }
        "pulls/list-reviews" | "pulls/list-review-comments" | "issues/list-comments" => {
            let (list, path) = match ctx.operation_id {
                "pulls/list-reviews" => (&ctx.st.reviews, "pulls/{n}/reviews"),
                "pulls/list-review-comments" => (&ctx.st.review_comments, "pulls/{n}/comments"),
                _ => (&ctx.st.issue_comments, "issues/{n}/comments"),
            };
            let exists = if ctx.operation_id.starts_with("pulls/") {
                ctx.st.pulls.contains_key(&(key.clone(), number))
            } else {
                ctx.st.issues.contains_key(&(key.clone(), number))
            };
            if !exists {
                return Some(Reply::not_found());
            }
            let items: Vec<Value> = list
                .iter()
                .filter(|i| i.repo == key && i.number == number)
                .map(|i| i.value.clone())
                .collect();
            let path = format!("/repos/{full}/{}", path.replace("{n}", &number.to_string()));
            paginate(ctx, &path, items, per_page, page, |_, v| v)
        }
        "pulls/create-review" => {
            let Some(pull) = ctx.st.pulls.get(&(key.clone(), number)).cloned() else {
                return Some(Reply::not_found());
            };
            let body = ctx.body.clone();
            let comments = body["comments"].as_array().cloned().unwrap_or_default();
            if let Some(files) = ctx.st.pull_files.get(&(key.clone(), number)) {
                for c in &comments {
                    if let Err(reply) = check_comment_position(files, c) {
                        return Some(reply);
                    }
                }
            }
            let state = match body["event"].as_str() {
                Some("APPROVE") => "APPROVED",
                Some("REQUEST_CHANGES") => "CHANGES_REQUESTED",
                Some("COMMENT") => "COMMENTED",
                _ => "PENDING",
            };
            if matches!(state, "REQUEST_CHANGES" | "COMMENTED")
                && body["body"].as_str().is_none_or(str::is_empty)
                && comments.is_empty()
            {
                return Some(Reply::json(
                    422,
                    json!({"message": "Unprocessable Entity", "errors": ["Body is required for this event"], "documentation_url": "https://docs.github.com/rest/pulls/reviews#create-a-review-for-a-pull-request", "status": "422"}),
                ));
            }
            let id = ctx.st.next_id();
            let commit_id = body["commit_id"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| pull["head"]["sha"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut review = example("pulls/create-review", 200);
            localize(&mut review, &base, Some(&full));
            review["id"] = json!(id);
            review["node_id"] = json!(format!("PRR_fake{id}"));
            review["user"] = ctx.st.user_json(&ctx.login);
            review["body"] = json!(body["body"].as_str().unwrap_or_default());
            review["state"] = json!(state);
            review["commit_id"] = json!(commit_id);
            let html = format!("https://github.com/{full}/pull/{number}#pullrequestreview-{id}");
            let pr_url = format!("{base}/repos/{full}/pulls/{number}");
            review["html_url"] = json!(html);
            review["pull_request_url"] = json!(pr_url);
            review["_links"] = json!({"html": {"href": html}, "pull_request": {"href": pr_url}});
            if state == "PENDING" {
                if let Some(m) = review.as_object_mut() {
                    m.remove("submitted_at");
                }
            } else {
                review["submitted_at"] = json!(now);
            }
            for c in comments {
                let value = review_comment(ctx, &full, number, &c, &commit_id, Some(id));
                ctx.st.review_comments.push(Item {
                    repo: key.clone(),
                    number,
                    value,
                });
            }
            ctx.st.reviews.push(Item {
                repo: key,
                number,
                value: review.clone(),
            });
            Reply::json(200, review)
        }
        "pulls/create-review-comment" => {
            if !ctx.st.pulls.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let body = ctx.body.clone();
            if let Some(files) = ctx.st.pull_files.get(&(key.clone(), number))
                && body.get("in_reply_to").is_none()
                && let Err(reply) = check_comment_position(files, &body)
            {
                return Some(reply);
            }
            let commit_id = body["commit_id"].as_str().unwrap_or_default().to_owned();
            let value = review_comment(ctx, &full, number, &body, &commit_id, None);
            ctx.st.review_comments.push(Item {
                repo: key,
                number,
                value: value.clone(),
            });
            Reply::json(201, value)
        }
        _ => return None,
    };
    Some(reply)
}

/// GitHub's 422 when a review comment is not on a line of the diff.
fn check_comment_position(files: &[Value], comment: &Value) -> Result<(), Reply> {
    let unprocessable = |msg: &str| {
        Reply::json(
            422,
            json!({
                "message": "Unprocessable Entity",
                "errors": [msg],
                "documentation_url": "https://docs.github.com/rest/pulls/reviews#create-a-review-for-a-pull-request",
                "status": "422",
            }),
        )
    };
    let path = comment["path"].as_str().unwrap_or_default();
    let Some(file) = files.iter().find(|f| f["filename"].as_str() == Some(path)) else {
        return Err(unprocessable("Path could not be resolved"));
    };
    if comment["subject_type"].as_str() == Some("file") {
        return Ok(());
    }
    let Some(line) = comment["line"].as_u64() else {
        return Ok(()); // `position` (deprecated) is not checked
    };
    let patch = file["patch"].as_str().unwrap_or_default();
    let (right, left) = commentable_lines(patch);
    let side = comment["side"].as_str().unwrap_or("RIGHT");
    let lines = if side == "LEFT" { &left } else { &right };
    let start_ok = comment["start_line"].as_u64().is_none_or(|s| {
        let start_side = comment["start_side"].as_str().unwrap_or(side);
        if start_side == "LEFT" {
            left.contains(&s)
        } else {
            right.contains(&s)
        }
    });
    if lines.contains(&line) && start_ok {
        Ok(())
    } else {
        Err(unprocessable(
            "Pull request review thread line must be part of the diff and Pull request review thread diff hunk can't be blank",
        ))
    }
}

fn review_comment(
    ctx: &mut Ctx,
    full: &str,
    number: u64,
    c: &Value,
    commit_id: &str,
    review_id: Option<u64>,
) -> Value {
    let base = ctx.st.base_url.clone();
    let now = timestamp(OffsetDateTime::now_utc());
    let id = ctx.st.next_id();
    let mut v = example("pulls/create-review-comment", 201);
    localize(&mut v, &base, Some(full));
    let url = format!("{base}/repos/{full}/pulls/comments/{id}");
    let html = format!("https://github.com/{full}/pull/{number}#discussion_r{id}");
    let pr_url = format!("{base}/repos/{full}/pulls/{number}");
    v["id"] = json!(id);
    v["node_id"] = json!(format!("PRRC_fake{id}"));
    v["url"] = json!(url);
    v["html_url"] = json!(html);
    v["pull_request_url"] = json!(pr_url);
    v["_links"] =
        json!({"self": {"href": url}, "html": {"href": html}, "pull_request": {"href": pr_url}});
    v["pull_request_review_id"] = json!(review_id.unwrap_or(id));
    v["body"] = json!(c["body"].as_str().unwrap_or_default());
    v["path"] = json!(c["path"].as_str().unwrap_or_default());
    v["commit_id"] = json!(commit_id);
    v["original_commit_id"] = json!(commit_id);
    v["user"] = ctx.st.user_json(&ctx.login);
    v["created_at"] = json!(now);
    v["updated_at"] = json!(now);
    for (field, original) in [
        ("line", "original_line"),
        ("start_line", "original_start_line"),
    ] {
        v[field] = c.get(field).cloned().unwrap_or(Value::Null);
        v[original] = c.get(field).cloned().unwrap_or(Value::Null);
    }
    v["side"] = c.get("side").cloned().unwrap_or(json!("RIGHT"));
    v["start_side"] = c.get("start_side").cloned().unwrap_or(Value::Null);
    v["position"] = c.get("position").cloned().unwrap_or(json!(1));
    v["original_position"] = v["position"].clone();
    v["subject_type"] = c.get("subject_type").cloned().unwrap_or(json!("line"));
    match c.get("in_reply_to").and_then(Value::as_u64) {
        Some(reply_to) => v["in_reply_to_id"] = json!(reply_to),
        None => {
            if let Some(m) = v.as_object_mut() {
                m.remove("in_reply_to_id");
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commentable_lines_follow_the_hunks() {
        let patch = "@@ -1,3 +1,4 @@\n a\n-b\n+c\n+d\n e";
        let (right, left) = commentable_lines(patch);
        assert_eq!(right.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(left.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
