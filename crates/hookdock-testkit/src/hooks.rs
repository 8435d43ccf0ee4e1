//! Repository and organization webhooks: create (with its `ping`), list, get, update, delete,
//! config, pings, test pushes, the deliveries listing with cursor pagination, and redelivery.
//! It owns the hook endpoints and their OAuth scope rules; the sending of deliveries belongs to
//! [`crate::deliveries`].

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::deliveries::{self, Outgoing};
use crate::server::{Ctx, Reply};
use crate::state::{FakeHook, HookOwner, State, timestamp};

const REPO_READ: &[&str] = &[
    "admin:repo_hook",
    "write:repo_hook",
    "read:repo_hook",
    "repo",
];
const REPO_WRITE: &[&str] = &["admin:repo_hook", "write:repo_hook", "repo"];
const ORG_SCOPES: &[&str] = &["admin:org_hook"];

/// `x-accepted-oauth-scopes` for a hook operation; `None` for other operations.
pub(crate) fn accepted_scopes(operation_id: &str, method: &str) -> Option<&'static str> {
    if !operation_id.contains("webhook") || operation_id.starts_with("apps/") {
        return None;
    }
    Some(if operation_id.starts_with("orgs/") {
        "admin:org_hook"
    } else if method == "GET" {
        "admin:repo_hook, read:repo_hook, repo"
    } else {
        "admin:repo_hook, repo, write:repo_hook"
    })
}

/// The JSON of a hook as the REST API shows it (secret masked).
pub(crate) fn hook_json(st: &State, hook: &FakeHook) -> Value {
    let base = &st.base_url;
    let url = format!("{base}{}/{}", hook.owner.hooks_path(), hook.id);
    let mut v = json!({
        "type": match hook.owner { HookOwner::Repository { .. } => "Repository", HookOwner::Organization { .. } => "Organization" },
        "id": hook.id,
        "name": "web",
        "active": hook.active,
        "events": hook.events,
        "config": config_json(hook),
        "updated_at": timestamp(hook.updated_at),
        "created_at": timestamp(hook.created_at),
        "url": url,
        "ping_url": format!("{url}/pings"),
        "deliveries_url": format!("{url}/deliveries"),
    });
    if matches!(hook.owner, HookOwner::Repository { .. }) {
        v["test_url"] = json!(format!("{url}/test"));
        v["last_response"] = hook.last_response.clone();
    }
    v
}

fn config_json(hook: &FakeHook) -> Value {
    let mut config = json!({
        "content_type": hook.content_type,
        "insecure_ssl": hook.insecure_ssl,
        "url": hook.url,
    });
    if hook.secret.is_some() {
        config["secret"] = json!("********");
    }
    config
}

/// The `ping` payload GitHub sends to a new hook.
pub(crate) fn ping_payload(st: &mut State, hook: &FakeHook) -> Vec<u8> {
    let mut payload = json!({
        "zen": "Keep it logically awesome.",
        "hook_id": hook.id,
        "hook": hook_json(st, hook),
    });
    match &hook.owner {
        HookOwner::Repository { owner, repo, .. } => {
            let key = crate::state::repo_key(owner, repo);
            payload["repository"] = st.repo_json(&key);
            payload["sender"] = st.user_json(owner);
        }
        HookOwner::Organization { org, id } => {
            payload["organization"] = json!({"login": org, "id": id});
            payload["sender"] = st.user_json(org);
        }
    }
    serde_json::to_vec(&payload).expect("JSON")
}

fn owner_of(ctx: &Ctx) -> HookOwner {
    if ctx.params.contains_key("org") {
        let org = ctx.st.org(ctx.param("org")).expect("org checked").clone();
        HookOwner::Organization {
            org: org.login,
            id: org.id,
        }
    } else {
        let repo = ctx
            .st
            .repo(ctx.param("owner"), ctx.param("repo"))
            .expect("repo checked")
            .clone();
        HookOwner::Repository {
            owner: repo.owner,
            repo: repo.name,
            id: repo.id,
        }
    }
}

fn same_owner(a: &HookOwner, b: &HookOwner) -> bool {
    a.target_type() == b.target_type() && a.target_id() == b.target_id()
}

/// The hook of the request's `hook_id`, if it belongs to the request's repository/organization.
fn find_hook(ctx: &Ctx) -> Option<FakeHook> {
    let owner = owner_of(ctx);
    ctx.st
        .hooks
        .get(&ctx.id("hook_id"))
        .filter(|h| same_owner(&h.owner, &owner))
        .cloned()
}

fn insecure_ssl_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// Applies a `config` object (create, update, update config) to a hook.
fn apply_config(hook: &mut FakeHook, config: &Value) -> Result<(), Reply> {
    if let Some(url) = config.get("url").and_then(Value::as_str) {
        hook.url = url.to_owned();
    }
    if let Some(ct) = config.get("content_type").and_then(Value::as_str) {
        if ct != "json" && ct != "form" {
            return Err(Reply::validation_failed(
                "Hook",
                "custom",
                Some("content_type"),
                "content_type must be either json or form",
            ));
        }
        hook.content_type = ct.to_owned();
    }
    if let Some(secret) = config.get("secret").and_then(Value::as_str) {
        hook.secret = (!secret.is_empty()).then(|| secret.to_owned());
    }
    if let Some(ssl) = config.get("insecure_ssl").and_then(insecure_ssl_of) {
        hook.insecure_ssl = ssl;
    }
    Ok(())
}

/// Answers a hook operation; `None` when the operation is not a hook one.
pub(crate) fn handle(ctx: &mut Ctx) -> Option<Reply> {
    let op = ctx.operation_id;
    let is_hook_op = op.contains("webhook") && !op.starts_with("apps/");
    if !is_hook_op {
        return None;
    }
    let needed = if op.starts_with("orgs/") {
        ORG_SCOPES
    } else if op.starts_with("repos/get-") || op.starts_with("repos/list-") {
        REPO_READ
    } else {
        REPO_WRITE
    };
    if !ctx.has_scope(needed) {
        // GitHub hides hooks the token may not administer.
        return Some(Reply::not_found());
    }
    Some(match op {
        "repos/list-webhooks" | "orgs/list-webhooks" => list(ctx),
        "repos/create-webhook" | "orgs/create-webhook" => create(ctx),
        "repos/get-webhook" | "orgs/get-webhook" => {
            with_hook(ctx, |ctx, hook| Reply::json(200, hook_json(ctx.st, &hook)))
        }
        "repos/update-webhook" | "orgs/update-webhook" => update(ctx),
        "repos/delete-webhook" | "orgs/delete-webhook" => with_hook(ctx, |ctx, hook| {
            ctx.st.hooks.remove(&hook.id);
            Reply::empty(204)
        }),
        "repos/get-webhook-config-for-repo" | "orgs/get-webhook-config-for-org" => {
            with_hook(ctx, |_, hook| Reply::json(200, config_json(&hook)))
        }
        "repos/update-webhook-config-for-repo" | "orgs/update-webhook-config-for-org" => {
            with_hook(ctx, |ctx, mut hook| {
                let config = ctx.body.clone();
                if let Err(reply) = apply_config(&mut hook, &config) {
                    return reply;
                }
                hook.updated_at = OffsetDateTime::now_utc();
                let json = config_json(&hook);
                ctx.st.hooks.insert(hook.id, hook);
                Reply::json(200, json)
            })
        }
        "repos/ping-webhook" | "orgs/ping-webhook" => with_hook(ctx, |ctx, hook| {
            let payload = ping_payload(ctx.st, &hook);
            ctx.outgoing.push(Outgoing::new(hook.id, "ping", payload));
            Reply::empty(204)
        }),
        "repos/test-push-webhook" => with_hook(ctx, |ctx, hook| {
            if hook.events.iter().any(|e| e == "push" || e == "*") {
                let payload = test_push_payload(ctx.st, &hook);
                ctx.outgoing.push(Outgoing::new(hook.id, "push", payload));
            }
            Reply::empty(204)
        }),
        "repos/list-webhook-deliveries" | "orgs/list-webhook-deliveries" => {
            with_hook(ctx, list_deliveries)
        }
        "repos/get-webhook-delivery" | "orgs/get-webhook-delivery" => {
            with_hook(ctx, |ctx, hook| {
                let id = ctx.id("delivery_id");
                match ctx
                    .st
                    .deliveries
                    .iter()
                    .find(|d| d.id == id && d.hook_id == hook.id)
                {
                    Some(d) => {
                        let url = format!(
                            "{}{}/{}/deliveries/{id}",
                            ctx.st.base_url,
                            hook.owner.hooks_path(),
                            hook.id
                        );
                        Reply::json(200, deliveries::detail_json(d, url))
                    }
                    None => Reply::not_found(),
                }
            })
        }
        "repos/redeliver-webhook-delivery" | "orgs/redeliver-webhook-delivery" => {
            with_hook(ctx, |ctx, hook| {
                let id = ctx.id("delivery_id");
                let Some(original) = ctx
                    .st
                    .deliveries
                    .iter()
                    .find(|d| d.id == id && d.hook_id == hook.id)
                    .cloned()
                else {
                    return Reply::not_found();
                };
                let age = OffsetDateTime::now_utc() - original.delivered_at;
                if age > time::Duration::days(3) {
                    return Reply::message(422, "Cannot redeliver deliveries older than 3 days");
                }
                ctx.st.redelivery_requests.push((hook.id, id));
                ctx.outgoing.push(Outgoing {
                    hook_id: hook.id,
                    event: original.event.clone(),
                    guid: original.guid.clone(),
                    payload: original.payload.clone(),
                    redelivery: true,
                });
                Reply::json(202, json!({}))
            })
        }
        _ => Reply::not_found(),
    })
}

fn with_hook(ctx: &mut Ctx, f: impl FnOnce(&mut Ctx, FakeHook) -> Reply) -> Reply {
    match find_hook(ctx) {
        Some(hook) => f(ctx, hook),
        None => Reply::not_found(),
    }
}

fn list(ctx: &mut Ctx) -> Reply {
    let owner = owner_of(ctx);
    let hooks: Vec<FakeHook> = ctx
        .st
        .hooks
        .values()
        .filter(|h| same_owner(&h.owner, &owner))
        .cloned()
        .collect();
    let (per_page, page) = ctx.page();
    let path = owner.hooks_path();
    crate::server::paginate(ctx, &path, hooks, per_page, page, |st, h| hook_json(st, &h))
}

fn create(ctx: &mut Ctx) -> Reply {
    let owner = owner_of(ctx);
    let body = ctx.body.clone();
    if let Some(name) = body.get("name").and_then(Value::as_str)
        && name != "web"
    {
        return Reply::validation_failed("Hook", "custom", Some("name"), "Name must be 'web'");
    }
    let config = body.get("config").cloned().unwrap_or(Value::Null);
    let Some(url) = config
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return Reply::validation_failed("Hook", "custom", Some("url"), "url is missing");
    };
    let scope_name = match owner {
        HookOwner::Repository { .. } => "repository",
        HookOwner::Organization { .. } => "organization",
    };
    if ctx
        .st
        .hooks
        .values()
        .any(|h| same_owner(&h.owner, &owner) && h.url == url)
    {
        return Reply::validation_failed(
            "Hook",
            "custom",
            None,
            &format!("Hook already exists on this {scope_name}"),
        );
    }
    let now = OffsetDateTime::now_utc();
    let mut hook = FakeHook {
        id: ctx.st.next_id(),
        url: url.to_owned(),
        content_type: "form".into(),
        secret: None,
        insecure_ssl: "0".into(),
        events: body
            .get("events")
            .map(string_list)
            .unwrap_or_else(|| vec!["push".into()]),
        active: body.get("active").and_then(Value::as_bool).unwrap_or(true),
        owner,
        created_at: now,
        updated_at: now,
        last_response: json!({"code": null, "status": "unused", "message": null}),
    };
    if let Err(reply) = apply_config(&mut hook, &config) {
        return reply;
    }
    ctx.st.hooks.insert(hook.id, hook.clone());
    let payload = ping_payload(ctx.st, &hook);
    if hook.active {
        ctx.outgoing.push(Outgoing::new(hook.id, "ping", payload));
    }
    let json = hook_json(ctx.st, &hook);
    let location = json["url"].as_str().unwrap_or_default().to_owned();
    Reply::json(201, json).header("location", location)
}

fn update(ctx: &mut Ctx) -> Reply {
    with_hook(ctx, |ctx, mut hook| {
        let body = ctx.body.clone();
        if let Some(config) = body.get("config")
            && let Err(reply) = apply_config(&mut hook, config)
        {
            return reply;
        }
        if let Some(events) = body.get("events") {
            hook.events = string_list(events);
        }
        for e in body.get("add_events").map(string_list).unwrap_or_default() {
            if !hook.events.contains(&e) {
                hook.events.push(e);
            }
        }
        let remove = body
            .get("remove_events")
            .map(string_list)
            .unwrap_or_default();
        hook.events.retain(|e| !remove.contains(e));
        if let Some(active) = body.get("active").and_then(Value::as_bool) {
            hook.active = active;
        }
        let duplicate = ctx
            .st
            .hooks
            .values()
            .any(|h| h.id != hook.id && same_owner(&h.owner, &hook.owner) && h.url == hook.url);
        if duplicate {
            return Reply::validation_failed(
                "Hook",
                "custom",
                None,
                "Hook already exists on this repository",
            );
        }
        hook.updated_at = OffsetDateTime::now_utc();
        ctx.st.hooks.insert(hook.id, hook.clone());
        Reply::json(200, hook_json(ctx.st, &hook))
    })
}

fn list_deliveries(ctx: &mut Ctx, hook: FakeHook) -> Reply {
    let per_page = ctx
        .query("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30usize)
        .clamp(1, 100);
    let status = ctx.query("status").map(str::to_owned);
    let cursor: Option<u64> = match ctx.query("cursor") {
        None | Some("") => None,
        Some(c) => match c.parse() {
            Ok(c) => Some(c),
            Err(_) => return Reply::message(400, "Invalid cursor"),
        },
    };
    // Newest first; the cursor is the id of the first delivery of the next page.
    let all: Vec<_> = ctx
        .st
        .deliveries
        .iter()
        .rev()
        .filter(|d| d.hook_id == hook.id)
        .filter(|d| match status.as_deref() {
            Some("success") => d.succeeded(),
            Some("failure") => !d.succeeded(),
            _ => true,
        })
        .filter(|d| cursor.is_none_or(|c| d.id <= c))
        .collect();
    let page: Vec<Value> = all
        .iter()
        .take(per_page)
        .map(|d| deliveries::summary_json(d))
        .collect();
    let mut reply_headers = Vec::new();
    if let Some(next) = all.get(per_page) {
        let mut url = format!(
            "{}{}/{}/deliveries?per_page={per_page}&cursor={}",
            ctx.st.base_url,
            hook.owner.hooks_path(),
            hook.id,
            next.id
        );
        if let Some(status) = &status {
            url.push_str(&format!("&status={status}"));
        }
        reply_headers.push(("link".to_owned(), format!("<{url}>; rel=\"next\"")));
    }
    let mut reply = Reply::json(200, Value::Array(page));
    reply.headers = reply_headers;
    reply
}

fn test_push_payload(st: &mut State, hook: &FakeHook) -> Vec<u8> {
    let (repository, sender) = match &hook.owner {
        HookOwner::Repository { owner, repo, .. } => {
            let key = crate::state::repo_key(owner, repo);
            (st.repo_json(&key), st.user_json(owner))
        }
        HookOwner::Organization { org, .. } => (Value::Null, st.user_json(org)),
    };
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": "0000000000000000000000000000000000000000",
        "created": false,
        "deleted": false,
        "forced": false,
        "commits": [],
        "head_commit": null,
        "repository": repository,
        "sender": sender,
    }))
    .expect("JSON")
}
