//! Repository content and the small read endpoints: contents (base64 file, directory listing,
//! raw media type), `repos/get`, `/user`, `/rate_limit` and collaborator permission. It owns
//! those endpoints; hooks, pulls and issues live in their own modules.

use base64::Engine;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::server::{Body, Ctx, Reply, Scope};
use crate::state::{State, example};

fn blob_sha(content: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(content);
    hex::encode(hasher.finalize())
}

fn content_json(st: &State, full: &str, path: &str, content: Option<&[u8]>) -> Value {
    let base = &st.base_url;
    let name = path.rsplit('/').next().unwrap_or(path);
    let sha = blob_sha(content.unwrap_or_default());
    let path_in_url = crate::state::encode_path(path);
    let url = format!("{base}/repos/{full}/contents/{path_in_url}?ref=main");
    let git_url = format!("{base}/repos/{full}/git/blobs/{sha}");
    let kind = if content.is_some() { "file" } else { "dir" };
    let html_url = format!(
        "https://github.com/{full}/{}/main/{path_in_url}",
        if content.is_some() { "blob" } else { "tree" }
    );
    let mut v = json!({
        "type": kind,
        "size": content.map_or(0, <[u8]>::len),
        "name": name,
        "path": path,
        "sha": sha,
        "url": url,
        "git_url": git_url,
        "html_url": html_url,
        "download_url": if content.is_some() { json!(format!("https://raw.githubusercontent.com/{full}/main/{path_in_url}")) } else { Value::Null },
        "_links": {"self": url, "git": git_url, "html": html_url},
    });
    if let Some(content) = content {
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        let wrapped: Vec<&str> = encoded
            .as_bytes()
            .chunks(60)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        v["content"] = json!(format!("{}\n", wrapped.join("\n")));
        v["encoding"] = json!("base64");
    }
    v
}

/// Answers the repository and account operations; `None` for others.
pub(crate) fn handle(ctx: &mut Ctx) -> Option<Reply> {
    let Scope {
        key, full, base, ..
    } = ctx.scope();
    let reply = match ctx.operation_id {
        "repos/get" => Reply::json(200, ctx.st.repo_json(&key)),
        "users/get-authenticated" => {
            let mut user = example("users/get-authenticated", 200);
            let id = ctx.st.user_id(&ctx.login);
            crate::state::rename_user(&mut user, &ctx.login, id, &base);
            Reply::json(200, user)
        }
        "rate-limit/get" => {
            let mut v = example("rate-limit/get", 200);
            let r = ctx.st.rate.clone();
            let core = json!({"limit": r.limit, "used": r.limit - r.remaining, "remaining": r.remaining, "reset": r.reset});
            v["resources"]["core"] = core.clone();
            v["rate"] = core;
            Reply::json(200, v)
        }
        "repos/get-collaborator-permission-level" => {
            let login = ctx.param("username").to_owned();
            let owner = ctx
                .st
                .repos
                .get(&key)
                .map(|r| r.owner.clone())
                .unwrap_or_default();
            let permission = ctx
                .st
                .permissions
                .get(&(key.clone(), login.to_ascii_lowercase()))
                .cloned()
                .unwrap_or_else(|| {
                    if login.eq_ignore_ascii_case(&owner) {
                        "admin".into()
                    } else {
                        "none".into()
                    }
                });
            let user = ctx.st.user_json(&login);
            Reply::json(
                200,
                json!({"permission": permission, "role_name": permission, "user": user}),
            )
        }
        "repos/get-content" => {
            let path = ctx.param("path").trim_matches('/').to_owned();
            let at = ctx
                .query("ref")
                .and_then(|r| {
                    ctx.st
                        .files_at
                        .get(&(key.clone(), path.clone(), r.to_owned()))
                })
                .cloned();
            if let Some(content) =
                at.or_else(|| ctx.st.files.get(&(key.clone(), path.clone())).cloned())
            {
                let accept = ctx
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if accept.contains("application/vnd.github.raw") {
                    return Some(Reply {
                        status: 200,
                        headers: Vec::new(),
                        body: Body::Raw {
                            content_type: "application/vnd.github.raw; charset=utf-8".into(),
                            bytes: content,
                        },
                    });
                }
                Reply::json(200, content_json(ctx.st, &full, &path, Some(&content)))
            } else {
                let prefix = format!("{path}/");
                let mut entries: Vec<(String, Option<Vec<u8>>)> = Vec::new();
                for ((k, p), content) in &ctx.st.files {
                    if *k != key || !p.starts_with(&prefix) {
                        continue;
                    }
                    let rest = &p[prefix.len()..];
                    match rest.split_once('/') {
                        Some((dir, _)) => {
                            let dir_path = format!("{prefix}{dir}");
                            if !entries.iter().any(|(e, _)| *e == dir_path) {
                                entries.push((dir_path, None));
                            }
                        }
                        None => entries.push((p.clone(), Some(content.clone()))),
                    }
                }
                if entries.is_empty() {
                    Reply::not_found()
                } else {
                    let list = entries
                        .iter()
                        .map(|(p, c)| {
                            let mut v = content_json(ctx.st, &full, p, c.as_deref());
                            if let Some(m) = v.as_object_mut() {
                                m.remove("content");
                                m.remove("encoding");
                            }
                            v
                        })
                        .collect();
                    Reply::json(200, Value::Array(list))
                }
            }
        }
        _ => return None,
    };
    Some(reply)
}
