//! The GitHub calls hookdock makes, with the few fields it reads typed and the rest left as
//! JSON. Paths follow GitHub's REST contract; the fake GitHub in the tests checks them against it.

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::{Call, GithubClient};
use super::error::GithubError;

/// Where a webhook lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum HookScope {
    Repository { owner: String, repo: String },
    Organization { org: String },
}

impl HookScope {
    pub fn repository(owner: &str, repo: &str) -> HookScope {
        HookScope::Repository {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
        }
    }

    pub fn organization(org: &str) -> HookScope {
        HookScope::Organization {
            org: org.to_owned(),
        }
    }

    /// `/repos/o/r` or `/orgs/o`.
    pub fn api_prefix(&self) -> String {
        match self {
            HookScope::Repository { owner, repo } => format!("/repos/{owner}/{repo}"),
            HookScope::Organization { org } => format!("/orgs/{org}"),
        }
    }

    /// `octo/repo` or `octo` (organization).
    pub fn name(&self) -> String {
        match self {
            HookScope::Repository { owner, repo } => format!("{owner}/{repo}"),
            HookScope::Organization { org } => org.clone(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            HookScope::Repository { .. } => "repository",
            HookScope::Organization { .. } => "organization",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Hook {
    pub id: u64,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub config: HookConfig,
    #[serde(default)]
    pub last_response: Option<HookLastResponse>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HookConfig {
    pub url: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HookLastResponse {
    pub code: Option<i64>,
    pub status: Option<String>,
    pub message: Option<String>,
}

/// What hookdock asks for when it installs a hook.
pub struct HookSpec<'a> {
    pub url: &'a str,
    pub secret: &'a SecretString,
    pub events: &'a [String],
}

impl HookSpec<'_> {
    fn config(&self) -> Value {
        json!({
            "url": self.url,
            "content_type": "json",
            "insecure_ssl": "0",
            "secret": self.secret.expose_secret(),
        })
    }
}

/// One delivery attempt as GitHub lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HookDelivery {
    pub id: u64,
    pub guid: String,
    pub delivered_at: String,
    #[serde(default)]
    pub redelivery: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_code: i64,
    #[serde(default)]
    pub event: String,
    pub action: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: u64,
    pub login: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    pub id: u64,
    pub full_name: String,
    pub default_branch: String,
}

/// A comment in the conversation of an issue or pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct IssueComment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    /// `None` for a deleted account.
    pub user: Option<User>,
    #[serde(default)]
    pub html_url: String,
}

/// A review of a pull request, as GitHub lists it (`state` in uppercase: `COMMENTED`, …).
#[derive(Debug, Clone, Deserialize)]
pub struct Review {
    pub id: u64,
    pub state: String,
    #[serde(default)]
    pub body: Option<String>,
    pub user: Option<User>,
    #[serde(default)]
    pub commit_id: Option<String>,
}

/// A comment on a line of a pull request's diff.
#[derive(Debug, Clone, Deserialize)]
pub struct ReviewComment {
    pub id: u64,
    pub body: String,
    pub path: String,
    #[serde(default)]
    pub line: Option<u64>,
    #[serde(default)]
    pub side: Option<String>,
    pub user: Option<User>,
    #[serde(default)]
    pub pull_request_review_id: Option<u64>,
    #[serde(default)]
    pub in_reply_to_id: Option<u64>,
}

/// What a review does once created; GitHub's `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewEvent {
    Comment,
    Approve,
    RequestChanges,
}

/// Which side of a split diff a line is on: `Left` for removed lines, `Right` for added and
/// unchanged ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Side {
    Left,
    Right,
}

/// A comment on one line of the diff (`line` counts in the file, on `side`).
#[derive(Debug, Clone, Serialize)]
pub struct InlineComment<'a> {
    pub path: &'a str,
    pub line: u64,
    pub side: Side,
    pub body: &'a str,
}

/// A review to post: a body, what it does, and its inline comments. A comment outside the diff
/// makes GitHub refuse the whole review (422).
#[derive(Debug, Clone, Serialize)]
pub struct NewReview<'a> {
    /// The head commit the review is about; GitHub takes the newest when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_id: Option<&'a str>,
    pub body: &'a str,
    pub event: ReviewEvent,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub comments: &'a [InlineComment<'a>],
}

/// A label to define in a repository.
#[derive(Debug, Clone, Serialize)]
pub struct NewLabel<'a> {
    pub name: &'a str,
    /// Six hex digits, without `#`.
    pub color: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
}

/// Whether [`GithubClient::create_label`] made the label or found it there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelCreation {
    Created,
    AlreadyExisted,
}

#[derive(Deserialize)]
struct LabelName {
    name: String,
}

#[derive(Deserialize)]
struct AssignedIssue {
    #[serde(default)]
    assignees: Vec<User>,
}

#[derive(Deserialize)]
struct Permission {
    permission: String,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    hooks: Vec<String>,
}

/// `s` as one segment of a URL path: everything but unreserved characters percent-encoded
/// (a space is `%20`; `+` would be a literal plus to GitHub).
fn path_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl GithubClient {
    pub async fn user(&self) -> Result<User, GithubError> {
        self.get("/user", "the signed-in user").await
    }

    pub async fn rate_limit(&self) -> Result<Value, GithubError> {
        self.get("/rate_limit", "the rate limit").await
    }

    pub async fn repository(&self, owner: &str, repo: &str) -> Result<Repository, GithubError> {
        self.get(
            &format!("/repos/{owner}/{repo}"),
            &format!("repository {owner}/{repo}"),
        )
        .await
    }

    pub async fn create_hook(
        &self,
        scope: &HookScope,
        spec: &HookSpec<'_>,
    ) -> Result<Hook, GithubError> {
        let what = format!("a webhook on {}", scope.name());
        let path = format!("{}/hooks", scope.api_prefix());
        let body = json!({ "name": "web", "active": true, "events": spec.events, "config": spec.config() });
        self.send(Call::new(Method::POST, &path, &what).json(&body))
            .await?
            .json(&what)
    }

    pub async fn list_hooks(&self, scope: &HookScope) -> Result<Vec<Hook>, GithubError> {
        let what = format!("the webhooks of {}", scope.name());
        self.get_all(
            &format!("{}/hooks?per_page=100", scope.api_prefix()),
            &what,
            1_000,
        )
        .await
    }

    pub async fn get_hook(&self, scope: &HookScope, id: u64) -> Result<Hook, GithubError> {
        self.get(
            &format!("{}/hooks/{id}", scope.api_prefix()),
            &format!("webhook {id} of {}", scope.name()),
        )
        .await
    }

    /// Points an existing hook at hookdock: URL, secret, events, active.
    pub async fn update_hook(
        &self,
        scope: &HookScope,
        id: u64,
        spec: &HookSpec<'_>,
    ) -> Result<Hook, GithubError> {
        let what = format!("webhook {id} of {}", scope.name());
        let body = json!({ "active": true, "events": spec.events, "config": spec.config() });
        self.send(
            Call::new(
                Method::PATCH,
                &format!("{}/hooks/{id}", scope.api_prefix()),
                &what,
            )
            .json(&body),
        )
        .await?
        .json(&what)
    }

    pub async fn delete_hook(&self, scope: &HookScope, id: u64) -> Result<(), GithubError> {
        let what = format!("webhook {id} of {}", scope.name());
        self.send(Call::new(
            Method::DELETE,
            &format!("{}/hooks/{id}", scope.api_prefix()),
            &what,
        ))
        .await
        .map(drop)
    }

    /// Sets a new secret (the hook's URL and content type stay).
    pub async fn set_hook_secret(
        &self,
        scope: &HookScope,
        id: u64,
        url: &str,
        secret: &SecretString,
    ) -> Result<(), GithubError> {
        let what = format!("the secret of webhook {id} of {}", scope.name());
        let body = json!({ "url": url, "content_type": "json", "insecure_ssl": "0", "secret": secret.expose_secret() });
        match scope {
            HookScope::Repository { .. } => self
                .send(
                    Call::new(
                        Method::PATCH,
                        &format!("{}/hooks/{id}/config", scope.api_prefix()),
                        &what,
                    )
                    .json(&body),
                )
                .await
                .map(drop),
            // Organization hooks are updated through the hook itself.
            HookScope::Organization { .. } => self
                .send(
                    Call::new(
                        Method::PATCH,
                        &format!("{}/hooks/{id}", scope.api_prefix()),
                        &what,
                    )
                    .json(&json!({ "config": body })),
                )
                .await
                .map(drop),
        }
    }

    pub async fn ping_hook(&self, scope: &HookScope, id: u64) -> Result<(), GithubError> {
        let what = format!("a ping of webhook {id} of {}", scope.name());
        self.send(Call::new(
            Method::POST,
            &format!("{}/hooks/{id}/pings", scope.api_prefix()),
            &what,
        ))
        .await
        .map(drop)
    }

    /// Delivery attempts, newest first, until one older than `since` (Unix seconds) or `max`.
    pub async fn hook_deliveries(
        &self,
        scope: &HookScope,
        id: u64,
        since: i64,
        max: usize,
    ) -> Result<Vec<HookDelivery>, GithubError> {
        let what = format!("the deliveries of webhook {id} of {}", scope.name());
        let mut next = Some(format!(
            "{}/hooks/{id}/deliveries?per_page={}",
            scope.api_prefix(),
            max.clamp(1, 100)
        ));
        let mut out = Vec::new();
        while let Some(url) = next.take() {
            let answer = self.send(Call::new(Method::GET, &url, &what)).await?;
            let page: Vec<HookDelivery> = answer.json(&what)?;
            let mut reached_old = page.is_empty();
            for d in page {
                if d.delivered_at_ms()
                    .is_some_and(|t| t < since.saturating_mul(1_000))
                {
                    reached_old = true;
                    break;
                }
                out.push(d);
            }
            if reached_old || out.len() >= max {
                break;
            }
            next = answer.next_page();
        }
        out.truncate(max);
        Ok(out)
    }

    pub async fn redeliver(
        &self,
        scope: &HookScope,
        hook_id: u64,
        delivery_id: u64,
    ) -> Result<(), GithubError> {
        let what = format!("a redelivery of delivery {delivery_id} of webhook {hook_id}");
        self.send(Call::new(
            Method::POST,
            &format!(
                "{}/hooks/{hook_id}/deliveries/{delivery_id}/attempts",
                scope.api_prefix()
            ),
            &what,
        ))
        .await
        .map(drop)
    }

    pub async fn pull_request(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Value, GithubError> {
        self.get(
            &format!("/repos/{owner}/{repo}/pulls/{number}"),
            &format!("pull request {owner}/{repo}#{number}"),
        )
        .await
    }

    /// The unified diff; `Status 406` when GitHub finds it too large (use the files instead).
    pub async fn pull_request_diff(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<String, GithubError> {
        let what = format!("the diff of {owner}/{repo}#{number}");
        let path = format!("/repos/{owner}/{repo}/pulls/{number}");
        let answer = self
            .send(Call::new(Method::GET, &path, &what).accept("application/vnd.github.diff"))
            .await?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }

    pub async fn pull_request_files(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<Value>, GithubError> {
        self.get_all(
            &format!("/repos/{owner}/{repo}/pulls/{number}/files?per_page=100"),
            &format!("the files of {owner}/{repo}#{number}"),
            3_000,
        )
        .await
    }

    /// POSTs `body` to `path` under the repository and returns GitHub's JSON answer. Reviews,
    /// review comments, issue comments, labels and assignees are all created this way.
    pub async fn create(
        &self,
        owner: &str,
        repo: &str,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, GithubError> {
        let full = format!("/repos/{owner}/{repo}/{path}");
        self.send(Call::new(Method::POST, &full, what).json(body))
            .await?
            .json(what)
    }

    pub async fn list(
        &self,
        owner: &str,
        repo: &str,
        path: &str,
        what: &str,
    ) -> Result<Vec<Value>, GithubError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.get_all(
            &format!("/repos/{owner}/{repo}/{path}{sep}per_page=100"),
            what,
            10_000,
        )
        .await
    }

    pub async fn update_issue_comment(
        &self,
        owner: &str,
        repo: &str,
        comment_id: u64,
        body: &str,
    ) -> Result<IssueComment, GithubError> {
        let what = format!("comment {comment_id} on {owner}/{repo}");
        self.send(
            Call::new(
                Method::PATCH,
                &format!("/repos/{owner}/{repo}/issues/comments/{comment_id}"),
                &what,
            )
            .json(&json!({ "body": body })),
        )
        .await?
        .json(&what)
    }

    pub async fn remove_label(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        label: &str,
    ) -> Result<(), GithubError> {
        let what = format!("label {label} of {owner}/{repo}#{number}");
        self.send(Call::new(
            Method::DELETE,
            &format!(
                "/repos/{owner}/{repo}/issues/{number}/labels/{}",
                path_segment(label)
            ),
            &what,
        ))
        .await
        .map(drop)
    }

    /// `login`'s permission on the repository: `admin`, `write`, `read` or `none` (GitHub folds
    /// `maintain` into `write` and `triage` into `read` here).
    pub async fn collaborator_permission(
        &self,
        owner: &str,
        repo: &str,
        login: &str,
    ) -> Result<String, GithubError> {
        let permission: Permission = self
            .get(
                &format!(
                    "/repos/{owner}/{repo}/collaborators/{}/permission",
                    path_segment(login)
                ),
                &format!("the permission of {login} on {owner}/{repo}"),
            )
            .await?;
        Ok(permission.permission)
    }

    /// Adds labels to an issue or pull request (GitHub defines unknown ones in the repository);
    /// returns the names it has now. With no labels nothing is changed and the current ones are
    /// listed (GitHub refuses an empty list).
    pub async fn add_labels(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        labels: &[&str],
    ) -> Result<Vec<String>, GithubError> {
        let what = format!("the labels of {owner}/{repo}#{number}");
        let path = format!("/repos/{owner}/{repo}/issues/{number}/labels");
        let now: Vec<LabelName> = if labels.is_empty() {
            self.get_all(&format!("{path}?per_page=100"), &what, 1_000)
                .await?
        } else {
            self.send(Call::new(Method::POST, &path, &what).json(&json!({ "labels": labels })))
                .await?
                .json(&what)?
        };
        Ok(now.into_iter().map(|l| l.name).collect())
    }

    /// Defines a label in the repository; one of that name already there is not an error.
    pub async fn create_label(
        &self,
        owner: &str,
        repo: &str,
        label: &NewLabel<'_>,
    ) -> Result<LabelCreation, GithubError> {
        let what = format!("label {} of {owner}/{repo}", label.name);
        let path = format!("/repos/{owner}/{repo}/labels");
        match self
            .send(Call::new(Method::POST, &path, &what).json(label))
            .await
        {
            Ok(_) => Ok(LabelCreation::Created),
            Err(GithubError::Validation { errors, .. })
                if errors.iter().any(|e| {
                    e.contains("already_exists")
                        || e.to_ascii_lowercase().contains("already exists")
                }) =>
            {
                Ok(LabelCreation::AlreadyExisted)
            }
            Err(e) => Err(e),
        }
    }

    /// Assigns users to an issue or pull request; returns who is assigned now. GitHub silently
    /// skips users who may not be assigned, so the answer is what to check.
    pub async fn add_assignees(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        logins: &[&str],
    ) -> Result<Vec<String>, GithubError> {
        let what = format!("the assignees of {owner}/{repo}#{number}");
        let issue: AssignedIssue = self
            .send(
                Call::new(
                    Method::POST,
                    &format!("/repos/{owner}/{repo}/issues/{number}/assignees"),
                    &what,
                )
                .json(&json!({ "assignees": logins })),
            )
            .await?
            .json(&what)?;
        Ok(issue.assignees.into_iter().map(|u| u.login).collect())
    }

    /// Posts a review with its inline comments in one request.
    pub async fn create_review(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        review: &NewReview<'_>,
    ) -> Result<Review, GithubError> {
        let what = format!("a review of {owner}/{repo}#{number}");
        self.send(
            Call::new(
                Method::POST,
                &format!("/repos/{owner}/{repo}/pulls/{number}/reviews"),
                &what,
            )
            .json(review),
        )
        .await?
        .json(&what)
    }

    /// Reviews of a pull request, oldest first.
    pub async fn list_reviews(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<Review>, GithubError> {
        self.get_all(
            &format!("/repos/{owner}/{repo}/pulls/{number}/reviews?per_page=100"),
            &format!("the reviews of {owner}/{repo}#{number}"),
            10_000,
        )
        .await
    }

    /// Comments on lines of a pull request's diff, oldest first.
    pub async fn list_review_comments(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<ReviewComment>, GithubError> {
        self.get_all(
            &format!("/repos/{owner}/{repo}/pulls/{number}/comments?per_page=100"),
            &format!("the review comments of {owner}/{repo}#{number}"),
            10_000,
        )
        .await
    }

    /// Comments on one line of the diff at `commit_id`, outside any review.
    pub async fn create_review_comment(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        commit_id: &str,
        comment: &InlineComment<'_>,
    ) -> Result<ReviewComment, GithubError> {
        let what = format!("a review comment on {owner}/{repo}#{number}");
        let body = json!({
            "commit_id": commit_id,
            "path": comment.path,
            "line": comment.line,
            "side": comment.side,
            "body": comment.body,
        });
        self.send(
            Call::new(
                Method::POST,
                &format!("/repos/{owner}/{repo}/pulls/{number}/comments"),
                &what,
            )
            .json(&body),
        )
        .await?
        .json(&what)
    }

    /// The conversation of an issue or pull request, oldest first.
    pub async fn list_issue_comments(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
    ) -> Result<Vec<IssueComment>, GithubError> {
        self.get_all(
            &format!("/repos/{owner}/{repo}/issues/{number}/comments?per_page=100"),
            &format!("the comments of {owner}/{repo}#{number}"),
            10_000,
        )
        .await
    }

    pub async fn create_issue_comment(
        &self,
        owner: &str,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<IssueComment, GithubError> {
        let what = format!("a comment on {owner}/{repo}#{number}");
        self.send(
            Call::new(
                Method::POST,
                &format!("/repos/{owner}/{repo}/issues/{number}/comments"),
                &what,
            )
            .json(&json!({ "body": body })),
        )
        .await?
        .json(&what)
    }

    /// The CIDR ranges GitHub sends webhook deliveries from (`hooks` of `GET /meta`).
    pub async fn meta_hook_ranges(&self) -> Result<Vec<String>, GithubError> {
        let meta: Meta = self.get("/meta", "GitHub's meta information").await?;
        Ok(meta.hooks)
    }

    /// A file's bytes at `git_ref`, or `None` when it does not exist.
    pub async fn file_contents(
        &self,
        owner: &str,
        repo: &str,
        path: &str,
        git_ref: &str,
    ) -> Result<Option<Vec<u8>>, GithubError> {
        use base64::Engine;
        let what = format!("{path} in {owner}/{repo}@{git_ref}");
        let encoded_path = path
            .trim_matches('/')
            .split('/')
            .map(path_segment)
            .collect::<Vec<_>>()
            .join("/");
        let encoded_ref: String = form_urlencoded::byte_serialize(git_ref.as_bytes()).collect();
        let value: Value = match self
            .get(
                &format!("/repos/{owner}/{repo}/contents/{encoded_path}?ref={encoded_ref}"),
                &what,
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let encoded: String = value
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|e| GithubError::Decode {
                what,
                message: e.to_string(),
            })
    }
}

impl HookDelivery {
    /// `delivered_at` as Unix milliseconds.
    pub fn delivered_at_ms(&self) -> Option<i64> {
        time::OffsetDateTime::parse(
            &self.delivered_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
    }
}
