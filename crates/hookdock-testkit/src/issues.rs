//! Issues: get, update, list, comments (list, create, update), events (list; recorded for
//! labels added or removed and for pull requests turned into drafts or marked ready), labels of
//! an issue (list, add, remove), labels of a repository (create, get, list) and assignees. It
//! owns those endpoints and the JSON of issues, comments, events and labels, built from
//! GitHub's examples.

use serde_json::{Value, json};

use crate::server::{Ctx, Reply, Scope, paginate};
use crate::state::{FakeLabel, Item, State, encode_path, example, localize};

fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The label JSON of the repository label `name` (defined on first use, as GitHub does).
fn label_json(st: &mut State, repo: &str, name: &str) -> Value {
    let label = st.repo_label(repo, name);
    repo_label_json(st, repo, &label)
}

fn repo_label_json(st: &State, repo: &str, label: &FakeLabel) -> Value {
    let mut v = example("issues/list-labels-on-issue", 200)[0].clone();
    let base = st.base_url.clone();
    localize(&mut v, &base, None);
    v["id"] = json!(label.id);
    v["node_id"] = json!(format!("LA_fake{}", label.id));
    v["name"] = json!(label.name);
    v["url"] = json!(format!(
        "{base}/repos/{repo}/labels/{}",
        encode_path(&label.name)
    ));
    v["description"] = json!(label.description);
    v["color"] = json!(label.color);
    v["default"] = json!(false);
    v
}

/// `POST /repos/{owner}/{repo}/labels`: GitHub's checks, then the new label.
fn create_label(ctx: &mut Ctx, key: &str, full: &str) -> Reply {
    let body = ctx.body.clone();
    let mut problems = Vec::new();
    match body.as_object() {
        None => problems.push("the request body must be a JSON object".to_owned()),
        Some(map) => {
            if !map.get("name").is_some_and(Value::is_string) {
                problems.push("`name` (string) is required".to_owned());
            }
            for (field, value) in map {
                match field.as_str() {
                    "name" => {}
                    "color" | "description" if value.is_string() => {}
                    "color" | "description" => problems.push(format!("`{field}` must be a string")),
                    other => problems.push(format!("unknown property `{other}`")),
                }
            }
        }
    }
    if !problems.is_empty() {
        let text = problems.join("; ");
        ctx.st.violations.push(format!(
            "POST /repos/{full}/labels: issues/create-label: request body does not match GitHub's: {text}"
        ));
        return Reply::message(422, &format!("Invalid request.\n\n{text}"));
    }
    let name = body["name"].as_str().unwrap_or_default().trim().to_owned();
    let color = body["color"].as_str().unwrap_or("ededed").to_owned();
    let description = body["description"].as_str().map(str::to_owned);
    let label_error = |code: &str, field: &str| {
        Reply::json(
            422,
            json!({
                "message": "Validation Failed",
                "errors": [{"resource": "Label", "code": code, "field": field}],
                "documentation_url": "https://docs.github.com/rest/issues/labels#create-a-label",
                "status": "422",
            }),
        )
    };
    if name.is_empty() {
        return label_error("missing_field", "name");
    }
    if color.len() != 6 || !color.bytes().all(|b| b.is_ascii_hexdigit()) {
        return label_error("invalid", "color");
    }
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 100)
    {
        return label_error("invalid", "description");
    }
    if ctx.st.find_repo_label(key, &name).is_some() {
        return label_error("already_exists", "name");
    }
    let label = FakeLabel {
        id: ctx.st.next_id(),
        name,
        color: color.to_ascii_lowercase(),
        description,
    };
    ctx.st
        .repo_labels
        .entry(key.to_owned())
        .or_default()
        .push(label.clone());
    let v = repo_label_json(ctx.st, key, &label);
    let location = v["url"].as_str().unwrap_or_default().to_owned();
    Reply::json(201, v).header("location", location)
}

fn login_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("login").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Label names from any of the body shapes GitHub accepts.
fn label_names(body: &Value) -> Vec<String> {
    let list = match body {
        Value::Object(m) => m.get("labels").cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    match list {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Object(m) => m.get("name").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Records an issue event (`event` by `actor` at `at`, with `extra` fields such as `label`) on
/// issue or pull request `number`, as GitHub's `issue-event` object; returns it.
pub(crate) fn record_event(
    st: &mut State,
    key: &str,
    number: u64,
    actor: &str,
    event: &str,
    at: time::OffsetDateTime,
    extra: Value,
) -> Value {
    let id = st.next_id();
    let base = st.base_url.clone();
    let full = st
        .repos
        .get(key)
        .map(|r| format!("{}/{}", r.owner, r.name))
        .unwrap_or_else(|| key.to_owned());
    let mut e = json!({
        "id": id,
        "node_id": format!("IE_fake{id}"),
        "url": format!("{base}/repos/{full}/issues/events/{id}"),
        "actor": st.user_json(actor),
        "event": event,
        "commit_id": null,
        "commit_url": null,
        "created_at": crate::state::timestamp(at),
        "performed_via_github_app": null,
    });
    if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), extra) {
        e.extend(extra);
    }
    st.issue_events.push(Item {
        repo: key.to_owned(),
        number,
        value: e.clone(),
    });
    e
}

/// Stores an issue that is not a pull request (e.g. a webhook payload's `issue`), with its
/// labels.
pub(crate) fn add_issue(st: &mut State, owner: &str, repo: &str, given: Value) {
    let mut new = NewIssue::build(st, owner, repo, &given, &["id", "node_id"]);
    let NewIssue { full, number, .. } = &new;
    new.issue["html_url"] = json!(format!("https://github.com/{full}/issues/{number}"));
    if let Some(map) = new.issue.as_object_mut() {
        map.remove("pull_request");
    }
    new.store(st);
}

/// An issue being added: GitHub's example issue with the given object's fields, and the
/// names of its labels. Shared by plain issues and the issue side of pull requests.
pub(crate) struct NewIssue {
    pub key: String,
    pub full: String,
    pub number: u64,
    pub labels: Vec<String>,
    pub issue: Value,
}

impl NewIssue {
    /// From `given` (an issue or a pull request): the common fields, plus `extra` ones.
    pub(crate) fn build(
        st: &State,
        owner: &str,
        repo: &str,
        given: &Value,
        extra: &[&str],
    ) -> NewIssue {
        let key = crate::state::repo_key(owner, repo);
        let number = given["number"]
            .as_u64()
            .expect("the object needs a `number`");
        let labels: Vec<String> = given["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["name"].as_str().map(str::to_owned))
            .collect();
        let full = st
            .repos
            .get(&key)
            .map(|r| format!("{}/{}", r.owner, r.name))
            .unwrap_or_else(|| format!("{owner}/{repo}"));
        let base = st.base_url.clone();
        let mut issue = example("issues/get", 200);
        localize(&mut issue, &base, Some(&full));
        let common = [
            "title",
            "body",
            "state",
            "user",
            "created_at",
            "updated_at",
            "closed_at",
            "locked",
            "assignee",
            "assignees",
            "milestone",
            "author_association",
        ];
        for field in extra.iter().chain(common.iter()) {
            if let Some(v) = given.get(*field) {
                issue[*field] = v.clone();
            }
        }
        issue["number"] = json!(number);
        let issue_url = format!("{base}/repos/{full}/issues/{number}");
        issue["url"] = json!(issue_url);
        issue["repository_url"] = json!(format!("{base}/repos/{full}"));
        issue["labels_url"] = json!(format!("{issue_url}/labels{{/name}}"));
        issue["comments_url"] = json!(format!("{issue_url}/comments"));
        issue["events_url"] = json!(format!("{issue_url}/events"));
        issue["comments"] = json!(0);
        if let Some(map) = issue.as_object_mut() {
            map.remove("closed_by");
        }
        NewIssue {
            key,
            full,
            number,
            labels,
            issue,
        }
    }

    /// Completes the issue to GitHub's schema and stores it with its labels.
    pub(crate) fn store(mut self, st: &mut State) {
        crate::state::complete("issues/get", 200, &mut self.issue);
        st.labels
            .insert((self.key.clone(), self.number), self.labels);
        st.issues.insert((self.key, self.number), self.issue);
    }
}

/// The issue JSON with its current labels.
pub(crate) fn issue_json(st: &mut State, key: &str, number: u64) -> Option<Value> {
    let mut issue = st.issues.get(&(key.to_owned(), number))?.clone();
    let labels = st
        .labels
        .get(&(key.to_owned(), number))
        .cloned()
        .unwrap_or_default();
    issue["labels"] = Value::Array(labels.iter().map(|l| label_json(st, key, l)).collect());
    Some(issue)
}

/// Answers the issue operations; `None` for others.
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
        "issues/create-comment" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let id = ctx.st.next_id();
            let mut c = example("issues/create-comment", 201);
            localize(&mut c, &base, Some(&full));
            c["id"] = json!(id);
            c["node_id"] = json!(format!("IC_fake{id}"));
            c["url"] = json!(format!("{base}/repos/{full}/issues/comments/{id}"));
            c["html_url"] = json!(format!(
                "https://github.com/{full}/issues/{number}#issuecomment-{id}"
            ));
            c["issue_url"] = json!(format!("{base}/repos/{full}/issues/{number}"));
            c["body"] = ctx.body["body"].clone();
            c["user"] = ctx.st.user_json(&ctx.login);
            c["created_at"] = json!(now);
            c["updated_at"] = json!(now);
            ctx.st.issue_comments.push(Item {
                repo: key.clone(),
                number,
                value: c.clone(),
            });
            if let Some(issue) = ctx.st.issues.get_mut(&(key, number)) {
                issue["comments"] = json!(issue["comments"].as_u64().unwrap_or(0) + 1);
            }
            Reply::json(201, c).header(
                "location",
                format!("{base}/repos/{full}/issues/comments/{id}"),
            )
        }
        "issues/update-comment" => {
            let id = ctx.id("comment_id");
            let body = ctx.body["body"].clone();
            match ctx
                .st
                .issue_comments
                .iter_mut()
                .find(|i| i.repo == key && i.value["id"].as_u64() == Some(id))
            {
                Some(item) => {
                    item.value["body"] = body;
                    item.value["updated_at"] = json!(now);
                    Reply::json(200, item.value.clone())
                }
                None => Reply::not_found(),
            }
        }
        "issues/get" => match issue_json(ctx.st, &key, number) {
            Some(issue) => Reply::json(200, issue),
            None => Reply::not_found(),
        },
        "issues/update" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let body = ctx.body.clone();
            if body.get("labels").is_some() {
                ctx.st
                    .labels
                    .insert((key.clone(), number), label_names(&body));
            }
            let assignees: Option<Vec<String>> = body.get("assignees").map(|a| {
                a.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(login_of)
                    .collect()
            });
            let assignee_users: Option<Vec<Value>> =
                assignees.map(|a| a.iter().map(|l| ctx.st.user_json(l)).collect());
            let single = match body.get("assignee") {
                Some(Value::String(l)) => Some(ctx.st.user_json(l)),
                Some(Value::Null) => Some(Value::Null),
                _ => None,
            };
            let issue = ctx
                .st
                .issues
                .get_mut(&(key.clone(), number))
                .expect("checked");
            for field in ["title", "body", "state", "state_reason"] {
                if let Some(v) = body.get(field) {
                    issue[field] = v.clone();
                }
            }
            if let Some(state) = body["state"].as_str() {
                issue["closed_at"] = if state == "closed" {
                    json!(now)
                } else {
                    Value::Null
                };
                if let Some(pull) = ctx.st.pulls.get_mut(&(key.clone(), number)) {
                    pull["state"] = json!(state);
                }
            }
            if let Some(users) = assignee_users {
                issue["assignee"] = users.first().cloned().unwrap_or(Value::Null);
                issue["assignees"] = Value::Array(users);
            }
            if let Some(user) = single {
                issue["assignee"] = user.clone();
                issue["assignees"] = if user.is_null() {
                    json!([])
                } else {
                    json!([user])
                };
            }
            issue["updated_at"] = json!(now);
            Reply::json(200, issue_json(ctx.st, &key, number).expect("exists"))
        }
        "issues/add-assignees" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let logins: Vec<String> = ctx.body["assignees"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(login_of)
                .collect();
            let users: Vec<Value> = logins.iter().map(|l| ctx.st.user_json(l)).collect();
            let issue = ctx
                .st
                .issues
                .get_mut(&(key.clone(), number))
                .expect("checked");
            let mut current = issue["assignees"].as_array().cloned().unwrap_or_default();
            for u in users {
                if !current.iter().any(|c| c["login"] == u["login"]) {
                    current.push(u);
                }
            }
            issue["assignee"] = current.first().cloned().unwrap_or(Value::Null);
            issue["assignees"] = Value::Array(current);
            Reply::json(201, issue_json(ctx.st, &key, number).expect("exists"))
        }
        "issues/list-labels-on-issue" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let labels = ctx
                .st
                .labels
                .get(&(key.clone(), number))
                .cloned()
                .unwrap_or_default();
            paginate(
                ctx,
                &format!("/repos/{full}/issues/{number}/labels"),
                labels,
                per_page,
                page,
                |st, l| label_json(st, &key, &l),
            )
        }
        "issues/add-labels" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let names = label_names(&ctx.body);
            let labels = ctx.st.labels.entry((key.clone(), number)).or_default();
            let mut added = Vec::new();
            for n in names {
                if !labels.iter().any(|l| l.eq_ignore_ascii_case(&n)) {
                    labels.push(n.clone());
                    added.push(n);
                }
            }
            let labels = labels.clone();
            let login = ctx.login.clone();
            for name in added {
                let label = ctx.st.repo_label(&key, &name);
                let label = json!({"label": {"name": label.name, "color": label.color}});
                record_event(ctx.st, &key, number, &login, "labeled", now_utc(), label);
            }
            Reply::json(
                200,
                Value::Array(labels.iter().map(|l| label_json(ctx.st, &key, l)).collect()),
            )
        }
        "issues/remove-label" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let name = ctx.param("name").to_owned();
            let labels = ctx.st.labels.entry((key.clone(), number)).or_default();
            let before = labels.len();
            labels.retain(|l| !l.eq_ignore_ascii_case(&name));
            if labels.len() == before {
                return Some(Reply::message(404, "Label does not exist"));
            }
            let labels = labels.clone();
            let login = ctx.login.clone();
            let label = ctx.st.repo_label(&key, &name);
            let label = json!({"label": {"name": label.name, "color": label.color}});
            record_event(ctx.st, &key, number, &login, "unlabeled", now_utc(), label);
            Reply::json(
                200,
                Value::Array(labels.iter().map(|l| label_json(ctx.st, &key, l)).collect()),
            )
        }
        "issues/create-label" => create_label(ctx, &key, &full),
        "issues/get-label" => match ctx.st.find_repo_label(&key, ctx.param("name")) {
            Some(label) => Reply::json(200, repo_label_json(ctx.st, &key, &label)),
            None => Reply::not_found(),
        },
        "issues/list-labels-for-repo" => {
            let labels = ctx.st.repo_labels.get(&key).cloned().unwrap_or_default();
            paginate(
                ctx,
                &format!("/repos/{full}/labels"),
                labels,
                per_page,
                page,
                |st, l| repo_label_json(st, &key, &l),
            )
        }
        "issues/list-events" => {
            if !ctx.st.issues.contains_key(&(key.clone(), number)) {
                return Some(Reply::not_found());
            }
            let events: Vec<Value> = ctx
                .st
                .issue_events
                .iter()
                .filter(|i| i.repo == key && i.number == number)
                .map(|i| i.value.clone())
                .collect();
            paginate(
                ctx,
                &format!("/repos/{full}/issues/{number}/events"),
                events,
                per_page,
                page,
                |_, e| e,
            )
        }
        "issues/list-for-repo" => {
            let state = ctx.query("state").unwrap_or("open").to_owned();
            let numbers: Vec<u64> = ctx
                .st
                .issues
                .iter()
                .filter(|((k, _), i)| {
                    *k == key && (state == "all" || i["state"].as_str() == Some(state.as_str()))
                })
                .map(|((_, n), _)| *n)
                .rev()
                .collect();
            let k = key.clone();
            paginate(
                ctx,
                &format!("/repos/{full}/issues"),
                numbers,
                per_page,
                page,
                move |st, n| issue_json(st, &k, n).unwrap_or(Value::Null),
            )
        }
        _ => return None,
    };
    Some(reply)
}
