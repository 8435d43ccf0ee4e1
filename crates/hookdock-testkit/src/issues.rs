//! Issues: get, update, list, comments (list, create, update), labels (list, add, remove) and
//! assignees. It owns those endpoints and the JSON of issues, comments and labels, built from
//! GitHub's examples.

use serde_json::{Value, json};

use crate::server::{Ctx, Reply, Scope, paginate};
use crate::state::{Item, State, example, localize};

fn label_json(st: &mut State, repo: &str, name: &str) -> Value {
    let mut v = example("issues/list-labels-on-issue", 200)[0].clone();
    let base = st.base_url.clone();
    localize(&mut v, &base, None);
    let id = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 1_000_000_000;
    v["id"] = json!(id);
    v["name"] = json!(name);
    v["url"] = json!(format!(
        "{base}/repos/{repo}/labels/{}",
        name.replace(' ', "%20")
    ));
    v["description"] = Value::Null;
    v["color"] = json!("ededed");
    v["default"] = json!(false);
    v
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
            for n in names {
                if !labels.iter().any(|l| l.eq_ignore_ascii_case(&n)) {
                    labels.push(n);
                }
            }
            let labels = labels.clone();
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
            Reply::json(
                200,
                Value::Array(labels.iter().map(|l| label_json(ctx.st, &key, l)).collect()),
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
