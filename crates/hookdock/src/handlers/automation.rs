//! What every automation (review, labels, commands, config simulation) shares: the event as
//! it sees it ([`EventView`]), the repository's settings, and the one door to GitHub's write
//! endpoints ([`Run`]). Every write goes through `Run`, which makes it idempotent (labels only
//! if missing, owned comments found by their hidden marker and edited in place) and records
//! it; in dry run it is recorded and not sent. Events hookdock caused itself are ignored, so
//! its own writes never start a loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::repo_config::{CONFIG_PATH, ConfigDefaults, RepoConfig, RepoConfigError};
use super::{Handler, HandlerError, HandlerFuture, JobContext, stored_payload};
use crate::github::{Github, GithubClient, GithubError, NewLabel, NewReview};
use crate::store::{ActionRecord, AutomationRecord, Effect, Store, now_ms};

impl From<GithubError> for HandlerError {
    fn from(e: GithubError) -> Self {
        let retry_after = match &e {
            GithubError::RateLimited { until } => until
                .duration_since(std::time::SystemTime::now())
                .ok()
                .or(Some(Duration::from_secs(1))),
            _ => None,
        };
        if e.is_transient() {
            HandlerError::Retry {
                message: e.to_string(),
                retry_after,
            }
        } else {
            HandlerError::Permanent(e.to_string())
        }
    }
}

/// The delivery as an automation sees it.
#[derive(Debug, Clone)]
pub struct EventView {
    pub event_id: i64,
    pub event: String,
    pub action: Option<String>,
    pub payload: Value,
    pub owner: String,
    pub repo: String,
    /// The issue or pull request the event is about.
    pub number: Option<u64>,
    pub sender: Option<String>,
    pub sender_is_bot: bool,
}

impl EventView {
    /// `None` for events outside a repository (automations act on repositories only).
    pub fn new(event_id: i64, event: &str, action: Option<&str>, payload: Value) -> Option<Self> {
        let full = payload.pointer("/repository/full_name")?.as_str()?;
        let (owner, repo) = full.split_once('/')?;
        let number = payload
            .pointer("/pull_request/number")
            .or_else(|| payload.pointer("/issue/number"))
            .and_then(Value::as_u64);
        let sender = payload
            .pointer("/sender/login")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let sender_is_bot = is_bot(payload.get("sender"));
        Some(EventView {
            event_id,
            event: event.to_owned(),
            action: action.map(str::to_owned),
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            number,
            sender,
            sender_is_bot,
            payload,
        })
    }

    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    pub fn default_branch(&self) -> &str {
        self.payload
            .pointer("/repository/default_branch")
            .and_then(Value::as_str)
            .unwrap_or("main")
    }

    /// The pull request of a `pull_request*` event.
    pub fn pull(&self) -> Option<&Value> {
        self.payload.get("pull_request")
    }

    /// True for an `issue_comment` on a pull request (GitHub marks the issue with a
    /// `pull_request` link).
    pub fn comment_on_pull(&self) -> bool {
        self.payload.pointer("/issue/pull_request").is_some()
    }
}

/// A GitHub user object that is a bot: `type: Bot`, or a login ending in `[bot]`.
pub fn is_bot(user: Option<&Value>) -> bool {
    let Some(user) = user else { return false };
    user.get("type").and_then(Value::as_str) == Some("Bot")
        || user
            .get("login")
            .and_then(Value::as_str)
            .is_some_and(|l| l.ends_with("[bot]"))
}

/// A commit's short form, as GitHub shows it.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// A hidden marker that identifies a comment hookdock owns, e.g. `<!-- hookdock:review -->`.
pub fn marker(name: &str) -> String {
    format!("<!-- hookdock:{name} -->")
}

pub type AutomationFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Outcome, HandlerError>> + Send + 'a>>;

/// What a run leaves besides its GitHub actions.
#[derive(Debug, Default)]
pub struct Outcome {
    pub review: Option<crate::store::ReviewRunRecord>,
    pub llm_calls: Vec<crate::store::LlmCallRecord>,
}

/// One automation. It runs as a queue job ([`AutomationJob`]) or, for dry-run replays and
/// config simulation, in process through [`Automations::execute`].
pub trait Automation: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn subscribes(&self, event: &str, action: Option<&str>) -> bool;
    /// Whether the repository's settings turn it on.
    fn enabled(&self, config: &RepoConfig) -> bool;
    /// Posts an invalid config file's error on the pull request (one automation does, so the
    /// error is posted once).
    fn reports_config_errors(&self) -> bool {
        false
    }
    fn run<'a>(&'a self, run: &'a Run<'a>, config: &'a RepoConfig) -> AutomationFuture<'a>;
}

/// Services the automations share.
pub struct Automations {
    github: Github,
    token: Option<SecretString>,
    store: Store,
    defaults: ConfigDefaults,
    identity: tokio::sync::OnceCell<String>,
    /// Parsed config files by the hash of their text (the client's ETag cache spares the
    /// download; this spares the parse).
    configs: moka::sync::Cache<[u8; 32], Result<Arc<RepoConfig>, RepoConfigError>>,
    /// `(repository, login)` → permission, for slash commands.
    permissions: moka::sync::Cache<(String, String), String>,
    pub llm: Option<Arc<super::review::llm::LlmReviewer>>,
}

impl Automations {
    pub fn new(
        github: Github,
        token: Option<SecretString>,
        store: Store,
        defaults: ConfigDefaults,
        llm: Option<Arc<super::review::llm::LlmReviewer>>,
    ) -> Automations {
        Automations {
            github,
            token,
            store,
            defaults,
            identity: tokio::sync::OnceCell::new(),
            configs: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_idle(Duration::from_secs(3_600))
                .build(),
            permissions: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            llm,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn client(&self) -> GithubClient {
        self.github.client(self.token.clone())
    }

    pub fn defaults(&self) -> &ConfigDefaults {
        &self.defaults
    }

    /// The login hookdock writes as (the token's user), asked once.
    pub async fn identity(&self) -> Result<&str, HandlerError> {
        self.identity
            .get_or_try_init(|| async {
                let user = self.client().user().await?;
                Ok::<_, HandlerError>(user.login)
            })
            .await
            .map(String::as_str)
    }

    /// The repository's settings from its config file at `git_ref` (the default branch for
    /// normal runs).
    pub async fn load_config(
        &self,
        owner: &str,
        repo: &str,
        git_ref: &str,
    ) -> Result<Result<Arc<RepoConfig>, RepoConfigError>, HandlerError> {
        let text = self
            .client()
            .file_contents(owner, repo, CONFIG_PATH, git_ref)
            .await?;
        let Some(bytes) = text else {
            return Ok(Ok(Arc::new(self.defaults.config().clone())));
        };
        Ok(self.parse_config(&bytes))
    }

    /// Parses (or finds in the cache) a config file's bytes.
    pub fn parse_config(&self, bytes: &[u8]) -> Result<Arc<RepoConfig>, RepoConfigError> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(bytes).into();
        self.configs.get_with(key, || {
            let text = std::str::from_utf8(bytes).map_err(|e| RepoConfigError {
                file: CONFIG_PATH.into(),
                line: None,
                key: None,
                message: format!("not UTF-8 text: {e}"),
            })?;
            self.defaults.with_file(text).map(Arc::new)
        })
    }

    /// `login`'s permission on the repository (`admin`, `write`, `read`, `none`), cached for
    /// five minutes.
    pub async fn permission(
        &self,
        owner: &str,
        repo: &str,
        login: &str,
    ) -> Result<String, HandlerError> {
        let key = (format!("{owner}/{repo}"), login.to_ascii_lowercase());
        if let Some(p) = self.permissions.get(&key) {
            return Ok(p);
        }
        let permission = match self
            .client()
            .collaborator_permission(owner, repo, login)
            .await
        {
            Ok(p) => p,
            // Not a collaborator at all.
            Err(e) if e.is_not_found() => "none".to_owned(),
            Err(e) => return Err(e.into()),
        };
        self.permissions.insert(key, permission.clone());
        Ok(permission)
    }

    /// Runs `automation` on `event`: skips events hookdock caused, loads the settings (or takes
    /// `config`), and returns what it did. `dry_run` forces recording instead of writing.
    /// Under given settings (the config simulation) the run starts from a blank issue (see
    /// [`Run::blank`]), so two settings are compared by what they decide, not by what is left
    /// to do on GitHub today.
    pub async fn execute(
        &self,
        automation: &dyn Automation,
        event: &EventView,
        dry_run: bool,
        config: Option<&RepoConfig>,
    ) -> Result<AutomationRecord, HandlerError> {
        let me = self.identity().await?;
        if event
            .sender
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(me))
        {
            return Ok(AutomationRecord::default());
        }
        let given = config.is_some();
        let loaded;
        let config = match config {
            Some(c) => c,
            None => match self
                .load_config(&event.owner, &event.repo, event.default_branch())
                .await?
            {
                Ok(c) => {
                    loaded = c;
                    &*loaded
                }
                Err(error) => {
                    if automation.reports_config_errors()
                        && let Some(number) = event.number
                    {
                        let run = Run::new(self, automation.name(), event, dry_run);
                        run.upsert_comment(
                            number,
                            &marker("config-error"),
                            &config_error_comment(&error),
                        )
                        .await?;
                    }
                    return Err(HandlerError::Permanent(format!(
                        "invalid repository config: {error}"
                    )));
                }
            },
        };
        if !automation.enabled(config) {
            return Ok(AutomationRecord::default());
        }
        let mut run = Run::new(self, automation.name(), event, dry_run || config.dry_run);
        run.blank = given;
        let outcome = automation.run(&run, config).await?;
        Ok(AutomationRecord {
            actions: run.into_actions(),
            review: outcome.review,
            llm_calls: outcome.llm_calls,
        })
    }
}

fn config_error_comment(error: &RepoConfigError) -> String {
    format!(
        "{}\n**hookdock could not use `{}`**\n\n```\n{error}\n```\n\nFix the file on the default branch; until then hookdock does nothing on this repository.",
        marker("config-error"),
        error.file
    )
}

/// One run of one automation on one event: GitHub reads, and the writes it records.
pub struct Run<'a> {
    pub services: &'a Automations,
    pub gh: GithubClient,
    pub event: &'a EventView,
    pub dry_run: bool,
    /// Reads of the issue's state (labels, assignees, hookdock's comments) answer "none"; only
    /// with `dry_run`, for comparing settings.
    pub blank: bool,
    handler: &'static str,
    actions: Mutex<Vec<ActionRecord>>,
}

impl<'a> Run<'a> {
    pub fn new(
        services: &'a Automations,
        handler: &'static str,
        event: &'a EventView,
        dry_run: bool,
    ) -> Run<'a> {
        Run {
            services,
            gh: services.client(),
            event,
            dry_run,
            blank: false,
            handler,
            actions: Mutex::new(Vec::new()),
        }
    }

    pub fn owner(&self) -> &str {
        &self.event.owner
    }

    pub fn repo(&self) -> &str {
        &self.event.repo
    }

    /// Records an action (a write, or a decision such as `skipped`).
    pub fn record(&self, number: Option<u64>, kind: &str, detail: Value) {
        let action = ActionRecord {
            event_id: self.event.event_id,
            handler: self.handler.to_owned(),
            repository: self.event.full_name(),
            number: number.and_then(|n| i64::try_from(n).ok()),
            dry_run: self.dry_run,
            kind: kind.to_owned(),
            detail,
            created_at: now_ms(),
        };
        if let Ok(mut actions) = self.actions.lock() {
            actions.push(action);
        }
    }

    pub fn into_actions(self) -> Vec<ActionRecord> {
        self.actions.into_inner().unwrap_or_default()
    }

    /// The labels on an issue or pull request now.
    pub async fn labels(&self, number: u64) -> Result<Vec<String>, HandlerError> {
        if self.blank {
            return Ok(Vec::new());
        }
        Ok(self
            .gh
            .add_labels(self.owner(), self.repo(), number, &[])
            .await?)
    }

    /// Adds the labels not there yet (defining them with `color` first so they get it;
    /// without one GitHub defines missing labels in grey); returns the ones it added.
    pub async fn add_labels(
        &self,
        number: u64,
        labels: &[String],
        color: Option<&str>,
    ) -> Result<Vec<String>, HandlerError> {
        let current = self.labels(number).await?;
        let missing: Vec<String> = labels
            .iter()
            .filter(|l| !current.iter().any(|c| c.eq_ignore_ascii_case(l)))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(missing);
        }
        if !self.dry_run {
            for name in missing.iter().filter(|_| color.is_some()) {
                self.gh
                    .create_label(
                        self.owner(),
                        self.repo(),
                        &NewLabel {
                            name,
                            color: color.unwrap_or("ededed"),
                            description: None,
                        },
                    )
                    .await?;
            }
            let names: Vec<&str> = missing.iter().map(String::as_str).collect();
            self.gh
                .add_labels(self.owner(), self.repo(), number, &names)
                .await?;
        }
        self.record(Some(number), "add_labels", json!({ "labels": missing }));
        Ok(missing)
    }

    /// Removes those of `labels` that are there; returns the ones it removed.
    pub async fn remove_labels(
        &self,
        number: u64,
        labels: &[String],
    ) -> Result<Vec<String>, HandlerError> {
        let current = self.labels(number).await?;
        let present: Vec<String> = current
            .into_iter()
            .filter(|c| labels.iter().any(|l| l.eq_ignore_ascii_case(c)))
            .collect();
        for name in &present {
            if !self.dry_run {
                match self
                    .gh
                    .remove_label(self.owner(), self.repo(), number, name)
                    .await
                {
                    Ok(()) => {}
                    // Removed meanwhile: the goal is reached.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.record(Some(number), "remove_label", json!({ "label": name }));
        }
        Ok(present)
    }

    /// The comment hookdock owns under `marker` on an issue or pull request: created, or
    /// edited in place when its text changed, or left alone when it is the same.
    pub async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<(), HandlerError> {
        let body = if body.contains(marker) {
            body.to_owned()
        } else {
            format!("{marker}\n{body}")
        };
        let existing = self.owned_comment(number, marker).await?;
        match existing {
            Some(c) if c.body.as_deref() == Some(body.as_str()) => {}
            Some(c) => {
                if !self.dry_run {
                    self.gh
                        .update_issue_comment(self.owner(), self.repo(), c.id, &body)
                        .await?;
                }
                self.record(
                    Some(number),
                    "update_comment",
                    json!({ "comment_id": c.id, "body": body }),
                );
            }
            None => {
                if !self.dry_run {
                    self.gh
                        .create_issue_comment(self.owner(), self.repo(), number, &body)
                        .await?;
                }
                self.record(Some(number), "create_comment", json!({ "body": body }));
            }
        }
        Ok(())
    }

    /// The comment hookdock owns under `marker` on an issue or pull request, if there is one.
    pub async fn owned_comment(
        &self,
        number: u64,
        marker: &str,
    ) -> Result<Option<crate::github::IssueComment>, HandlerError> {
        if self.blank {
            return Ok(None);
        }
        let me = self.services.identity().await?.to_owned();
        let comments = self
            .gh
            .list_issue_comments(self.owner(), self.repo(), number)
            .await?;
        Ok(comments.into_iter().find(|c| {
            c.body.as_deref().is_some_and(|b| b.contains(marker))
                && c.user
                    .as_ref()
                    .is_some_and(|u| u.login.eq_ignore_ascii_case(&me))
        }))
    }

    /// Posts a review; returns GitHub's id (none in dry run).
    pub async fn create_review(
        &self,
        number: u64,
        review: &NewReview<'_>,
    ) -> Result<Option<u64>, HandlerError> {
        let id = if self.dry_run {
            None
        } else {
            Some(
                self.gh
                    .create_review(self.owner(), self.repo(), number, review)
                    .await?
                    .id,
            )
        };
        self.record(
            Some(number),
            "create_review",
            serde_json::to_value(review).unwrap_or(Value::Null),
        );
        Ok(id)
    }

    /// Makes `logins` assigned (`assign`) or not; returns who changed.
    pub async fn set_assignees(
        &self,
        number: u64,
        logins: &[String],
        assign: bool,
    ) -> Result<Vec<String>, HandlerError> {
        let (owner, repo) = (self.owner(), self.repo());
        let issue: Value = if self.blank {
            json!({ "assignees": [] })
        } else {
            self.gh
                .get(
                    &format!("/repos/{owner}/{repo}/issues/{number}"),
                    &format!("issue {owner}/{repo}#{number}"),
                )
                .await?
        };
        let current: Vec<String> = issue
            .get("assignees")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.get("login").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let has = |l: &String| current.iter().any(|c| c.eq_ignore_ascii_case(l));
        let changed: Vec<String> = logins
            .iter()
            .filter(|l| if assign { !has(l) } else { has(l) })
            .cloned()
            .collect();
        if changed.is_empty() {
            return Ok(changed);
        }
        if !self.dry_run {
            if assign {
                let names: Vec<&str> = changed.iter().map(String::as_str).collect();
                self.gh.add_assignees(owner, repo, number, &names).await?;
            } else {
                let remaining: Vec<&String> = current
                    .iter()
                    .filter(|c| !changed.iter().any(|r| r.eq_ignore_ascii_case(c)))
                    .collect();
                let what = format!("the assignees of {owner}/{repo}#{number}");
                self.gh
                    .send(
                        crate::github::Call::new(
                            reqwest::Method::PATCH,
                            &format!("/repos/{owner}/{repo}/issues/{number}"),
                            &what,
                        )
                        .json(&json!({ "assignees": remaining })),
                    )
                    .await?;
            }
        }
        self.record(
            Some(number),
            if assign { "assign" } else { "unassign" },
            json!({ "logins": changed }),
        );
        Ok(changed)
    }
}

/// Runs an [`Automation`] as a queue job; what it did is committed with the job.
pub struct AutomationJob {
    automation: Arc<dyn Automation>,
    services: Arc<Automations>,
}

impl AutomationJob {
    pub fn new(automation: Arc<dyn Automation>, services: Arc<Automations>) -> AutomationJob {
        AutomationJob {
            automation,
            services,
        }
    }
}

impl Handler for AutomationJob {
    fn name(&self) -> &'static str {
        self.automation.name()
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        self.automation.subscribes(event, action)
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let payload = ctx.payload().await?;
            let job = ctx.job;
            let Some(event) =
                EventView::new(job.event_id, &job.event, job.action.as_deref(), payload)
            else {
                return Ok(Vec::new());
            };
            let record = self
                .services
                .execute(&*self.automation, &event, false, None)
                .await?;
            Ok(if record == AutomationRecord::default() {
                Vec::new()
            } else {
                vec![Effect::RecordAutomation(Box::new(record))]
            })
        })
    }
}

/// What one automation would have done with an event in dry run, or why it could not say.
#[derive(Debug)]
pub struct DryRun {
    pub automation: &'static str,
    pub result: Result<AutomationRecord, HandlerError>,
}

/// Runs every automation in `automations` subscribed to a stored event in dry run, optionally
/// under other settings. Nothing is written to GitHub or to the database.
pub async fn dry_run_event(
    services: &Automations,
    automations: &[Arc<dyn Automation>],
    event_id: i64,
    config: Option<&RepoConfig>,
) -> Result<Vec<DryRun>, HandlerError> {
    let detail = services.store().event_summary(event_id).await?;
    let payload = stored_payload(services.store(), event_id).await?;
    let Some(view) = EventView::new(event_id, &detail.event, detail.action.as_deref(), payload)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for automation in automations {
        if !automation.subscribes(&view.event, view.action.as_deref()) {
            continue;
        }
        out.push(DryRun {
            automation: automation.name(),
            result: services.execute(&**automation, &view, true, config).await,
        });
    }
    Ok(out)
}

/// The reviewer the server's `llm` settings describe, if a base URL is set.
pub fn llm_reviewer(
    settings: &crate::config::LlmSettings,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<Option<Arc<super::review::llm::LlmReviewer>>, super::review::llm::LlmError> {
    let Some(base_url) = &settings.base_url else {
        return Ok(None);
    };
    let config = super::review::llm::LlmConfig {
        base_url: base_url.clone(),
        model: settings.model.clone(),
        api_key: settings.api_key.clone(),
        timeout: Duration::from_secs(settings.timeout_secs),
        max_retries: settings.max_retries,
        max_input_bytes: settings.max_input_bytes,
        max_findings: settings.max_findings,
        ..super::review::llm::LlmConfig::default()
    };
    super::review::llm::LlmReviewer::new(config, clock).map(|r| Some(Arc::new(r)))
}

/// The enabled automations and the services they share.
pub struct AutomationSet {
    pub services: Arc<Automations>,
    pub automations: Vec<Arc<dyn Automation>>,
}

impl AutomationSet {
    /// Every built-in automation, the config simulation last (it replays the others).
    pub fn new(services: Arc<Automations>) -> AutomationSet {
        let mut automations: Vec<Arc<dyn Automation>> = Vec::new();
        automations.extend(super::review::run::automations());
        automations.extend(super::labeling::automations());
        automations.extend(super::commands::automations());
        let simulate: Arc<dyn Automation> =
            Arc::new(super::simulate::Simulate::new(automations.clone()));
        automations.push(simulate);
        AutomationSet {
            services,
            automations,
        }
    }

    /// The automations as queue handlers.
    pub fn handlers(&self) -> Vec<Arc<dyn Handler>> {
        self.automations
            .iter()
            .map(|a| {
                Arc::new(AutomationJob::new(
                    Arc::clone(a),
                    Arc::clone(&self.services),
                )) as Arc<dyn Handler>
            })
            .collect()
    }

    /// Replays a stored event in dry run under the repository's current settings, records what
    /// each automation would have done (marked dry run) and returns it.
    pub async fn dry_run(&self, event_id: i64) -> Result<Vec<DryRunReport>, HandlerError> {
        let runs = dry_run_event(&self.services, &self.automations, event_id, None).await?;
        let mut reports = Vec::new();
        for run in runs {
            match run.result {
                Ok(record) => {
                    let actions = record.actions.clone();
                    if !actions.is_empty() {
                        let record = AutomationRecord {
                            actions: record.actions,
                            ..AutomationRecord::default()
                        };
                        self.services
                            .store()
                            .apply_effects(&[Effect::RecordAutomation(Box::new(record))])
                            .await?;
                    }
                    reports.push(DryRunReport {
                        automation: run.automation,
                        actions,
                        error: None,
                    });
                }
                Err(e) => reports.push(DryRunReport {
                    automation: run.automation,
                    actions: Vec::new(),
                    error: Some(e.to_string()),
                }),
            }
        }
        Ok(reports)
    }
}

/// What a dry-run replay reports per automation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRunReport {
    pub automation: &'static str,
    pub actions: Vec<ActionRecord>,
    pub error: Option<String>,
}
