//! `GET /meta`: GitHub's published network ranges and SSH keys. It owns that endpoint (served
//! with or without a token, as GitHub does) and nothing else; the `hooks` ranges are set by the
//! test ([`crate::FakeGitHub::set_meta_hooks`]), the rest is GitHub's answer as documented.

use serde_json::{Value, json};

use crate::server::{Ctx, Reply};

/// Answers `meta/get`; `None` for other operations.
pub(crate) fn handle(ctx: &mut Ctx) -> Option<Reply> {
    if ctx.operation_id != "meta/get" {
        return None;
    }
    Some(Reply::json(200, meta_json(&ctx.st.meta_hooks)))
}

fn meta_json(hooks: &[String]) -> Value {
    json!({
        "verifiable_password_authentication": false,
        "ssh_key_fingerprints": {
            "SHA256_ECDSA": "p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
            "SHA256_ED25519": "+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
            "SHA256_RSA": "uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
        },
        "ssh_keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        ],
        "hooks": hooks,
        "web": ["192.30.252.0/22", "185.199.108.0/22", "140.82.112.0/20", "143.55.64.0/20"],
        "api": ["192.30.252.0/22", "185.199.108.0/22", "140.82.112.0/20", "143.55.64.0/20"],
        "git": ["192.30.252.0/22", "185.199.108.0/22", "140.82.112.0/20", "143.55.64.0/20"],
        "github_enterprise_importer": ["192.30.252.0/22", "185.199.108.0/22"],
        "packages": ["140.82.121.33/32", "140.82.121.34/32"],
        "pages": ["192.30.252.153/32", "192.30.252.154/32", "185.199.108.153/32"],
        "importer": ["52.23.85.212/32", "34.194.209.156/32"],
        "actions": ["4.148.0.0/16", "4.149.0.0/18"],
        "dependabot": ["18.213.123.130/32", "3.217.79.163/32"],
        "domains": {
            "website": ["*.github.com", "*.github.dev", "*.github.io"],
            "codespaces": ["*.github.com", "*.api.github.com"],
            "copilot": ["*.github.com", "*.githubcopilot.com"],
            "packages": ["*.pkg.github.com", "*.ghcr.io"]
        }
    })
}
