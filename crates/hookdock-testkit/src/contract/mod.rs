//! GitHub's REST contract: loads the trimmed OpenAPI description once per process, matches a
//! request to its operation, and checks path and query parameters, the request body and the
//! fake's own responses against it.
//!
//! It owns the description and the list of real GitHub endpoints the trimmed description lacks
//! ([`EXTRA_ENDPOINTS`]); it does not answer requests or keep any state.

mod schema;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;

pub use schema::validate as validate_schema;

/// Environment variable that overrides where the OpenAPI description is read from.
pub const OPENAPI_ENV: &str = "HOOKDOCK_GITHUB_OPENAPI";

/// Real GitHub endpoints that the trimmed description does not contain but the fake serves:
/// `(method, path template, operation id)`. Requests to them are checked only for the shape of
/// their path (parameters named `*_id` or `*_number` must be integers); they are not contract
/// violations.
pub const EXTRA_ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/orgs/{org}/hooks/{hook_id}", "orgs/get-webhook"),
    (
        "GET",
        "/orgs/{org}/hooks/{hook_id}/config",
        "orgs/get-webhook-config-for-org",
    ),
    (
        "PATCH",
        "/orgs/{org}/hooks/{hook_id}/config",
        "orgs/update-webhook-config-for-org",
    ),
    (
        "POST",
        "/orgs/{org}/hooks/{hook_id}/pings",
        "orgs/ping-webhook",
    ),
    (
        "GET",
        "/orgs/{org}/hooks/{hook_id}/deliveries",
        "orgs/list-webhook-deliveries",
    ),
    (
        "GET",
        "/orgs/{org}/hooks/{hook_id}/deliveries/{delivery_id}",
        "orgs/get-webhook-delivery",
    ),
    (
        "POST",
        "/orgs/{org}/hooks/{hook_id}/deliveries/{delivery_id}/attempts",
        "orgs/redeliver-webhook-delivery",
    ),
    (
        "GET",
        "/repos/{owner}/{repo}/collaborators/{username}/permission",
        "repos/get-collaborator-permission-level",
    ),
    ("GET", "/meta", "meta/get"),
    (
        "GET",
        "/repos/{owner}/{repo}/labels",
        "issues/list-labels-for-repo",
    ),
    (
        "POST",
        "/repos/{owner}/{repo}/labels",
        "issues/create-label",
    ),
    (
        "GET",
        "/repos/{owner}/{repo}/labels/{name}",
        "issues/get-label",
    ),
    // At most 250 commits, oldest first; `per_page` (≤ 100) and `page`, with `Link` headers.
    (
        "GET",
        "/repos/{owner}/{repo}/pulls/{pull_number}/commits",
        "pulls/list-commits",
    ),
    (
        "GET",
        "/repos/{owner}/{repo}/issues/{issue_number}/events",
        "issues/list-events",
    ),
];

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    /// A `{name}` segment; `rest` when it takes all remaining segments (`x-multi-segment`).
    Param {
        name: String,
        rest: bool,
    },
}

#[derive(Debug, Clone)]
struct Param {
    name: String,
    location: String,
    required: bool,
    schema: Value,
}

/// One operation (method + path template) of the contract.
#[derive(Debug)]
pub struct Operation {
    pub method: String,
    pub template: String,
    pub operation_id: String,
    /// From [`EXTRA_ENDPOINTS`], not from the description.
    pub extra: bool,
    segments: Vec<Segment>,
    params: Vec<Param>,
    body_required: bool,
    body_schema: Option<Value>,
    responses: Value,
}

/// The loaded contract.
#[derive(Debug)]
pub struct Contract {
    operations: Vec<Operation>,
}

/// A request matched to an operation: decoded path parameters and the problems found.
#[derive(Debug)]
pub struct Matched<'a> {
    pub operation: &'a Operation,
    pub path_params: BTreeMap<String, String>,
}

/// Why a request did not match any operation.
#[derive(Debug, PartialEq, Eq)]
pub enum NoMatch {
    UnknownPath,
    MethodNotAllowed,
    /// The path fits a template but a parameter has the wrong type (`/hooks/abc`).
    BadPathParam(String),
}

static CONTRACT: OnceLock<Contract> = OnceLock::new();

/// The contract of this process, loaded and compiled on first use.
///
/// Panics with the path it tried when the description cannot be read: without it the fake would
/// check nothing, which must not pass silently.
pub fn contract() -> &'static Contract {
    CONTRACT.get_or_init(|| {
        let path = std::env::var(OPENAPI_ENV).unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures/github-rest-openapi.json"
            )
            .to_owned()
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("hookdock-testkit: cannot read GitHub's OpenAPI description {path}: {e} (set {OPENAPI_ENV})")
        });
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("hookdock-testkit: {path} is not JSON: {e}"));
        Contract::from_document(&doc)
    })
}

fn parse_template(template: &str, multi: &[String]) -> Vec<Segment> {
    template
        .trim_start_matches('/')
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param {
                    name: name.to_owned(),
                    rest: multi.iter().any(|m| m == name),
                },
                None => Segment::Literal(s.to_owned()),
            },
        )
        .collect()
}

impl Contract {
    fn from_document(doc: &Value) -> Contract {
        let mut operations = Vec::new();
        let empty = serde_json::Map::new();
        let paths = doc["paths"].as_object().unwrap_or(&empty);
        for (template, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                if method == "parameters" {
                    continue;
                }
                let params: Vec<Param> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| Param {
                        name: p["name"].as_str().unwrap_or_default().to_owned(),
                        location: p["in"].as_str().unwrap_or_default().to_owned(),
                        required: p["required"].as_bool().unwrap_or(false),
                        schema: p["schema"].clone(),
                    })
                    .collect();
                let multi: Vec<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["x-multi-segment"].as_bool() == Some(true))
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect();
                let body = &op["requestBody"];
                operations.push(Operation {
                    method: method.to_ascii_uppercase(),
                    template: template.clone(),
                    operation_id: op["operationId"].as_str().unwrap_or_default().to_owned(),
                    extra: false,
                    segments: parse_template(template, &multi),
                    params,
                    body_required: body["required"].as_bool().unwrap_or(false),
                    body_schema: body
                        .get("content")
                        .map(|c| c["application/json"]["schema"].clone()),
                    responses: op["responses"].clone(),
                });
            }
        }
        for (method, template, operation_id) in EXTRA_ENDPOINTS {
            let segments = parse_template(template, &[]);
            let params = segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param { name, .. } => Some(Param {
                        name: name.clone(),
                        location: "path".into(),
                        required: true,
                        schema: if name.ends_with("_id") || name.ends_with("_number") {
                            serde_json::json!({"type": "integer"})
                        } else {
                            serde_json::json!({"type": "string"})
                        },
                    }),
                    Segment::Literal(_) => None,
                })
                .collect();
            operations.push(Operation {
                method: (*method).to_owned(),
                template: (*template).to_owned(),
                operation_id: (*operation_id).to_owned(),
                extra: true,
                segments,
                params,
                body_required: false,
                body_schema: None,
                responses: Value::Null,
            });
        }
        Contract { operations }
    }

    /// Number of operations, description and extras together.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether the contract has no operation at all.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The operation with this id.
    pub fn operation(&self, operation_id: &str) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|o| o.operation_id == operation_id)
    }

    /// Finds the operation for `method` and `path` (no query string). Among several matching
    /// templates the one with the most literal segments wins, as in GitHub's router.
    pub fn match_request(&self, method: &str, path: &str) -> Result<Matched<'_>, NoMatch> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(usize, &Operation, BTreeMap<String, String>)> = None;
        let mut path_known = false;
        for op in &self.operations {
            let Some(params) = match_segments(&op.segments, &parts) else {
                continue;
            };
            path_known = true;
            if !op.method.eq_ignore_ascii_case(method) {
                continue;
            }
            let literals = op
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            if best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
                best = Some((literals, op, params));
            }
        }
        let Some((_, operation, path_params)) = best else {
            return Err(if path_known {
                NoMatch::MethodNotAllowed
            } else {
                NoMatch::UnknownPath
            });
        };
        for p in operation.params.iter().filter(|p| p.location == "path") {
            if let Some(v) = path_params.get(&p.name)
                && let Some(problem) = check_scalar(&p.schema, v)
            {
                return Err(NoMatch::BadPathParam(format!(
                    "path parameter `{}`: {problem}",
                    p.name
                )));
            }
        }
        Ok(Matched {
            operation,
            path_params,
        })
    }
}

fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut i = 0;
    for (n, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Literal(lit) => {
                if parts.get(i) != Some(&lit.as_str()) {
                    return None;
                }
                i += 1;
            }
            Segment::Param { name, rest } => {
                let take = if *rest {
                    let after = segments.len() - n - 1;
                    parts.len().checked_sub(i + after).filter(|t| *t > 0)?
                } else {
                    1
                };
                let raw = parts.get(i..i + take)?.join("/");
                if raw.is_empty() {
                    return None;
                }
                let decoded = percent_encoding::percent_decode_str(&raw)
                    .decode_utf8_lossy()
                    .into_owned();
                params.insert(name.clone(), decoded);
                i += take;
            }
        }
    }
    (i == parts.len()).then_some(params)
}

/// Checks a parameter's raw string against a scalar schema (type, enum).
fn check_scalar(schema: &Value, raw: &str) -> Option<String> {
    let value = match schema["type"].as_str() {
        Some("integer") => match raw.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => return Some(format!("{raw:?} is not an integer")),
        },
        Some("number") => match raw.parse::<f64>() {
            Ok(n) => Value::from(n),
            Err(_) => return Some(format!("{raw:?} is not a number")),
        },
        Some("boolean") => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Some(format!("{raw:?} is not a boolean")),
        },
        _ => Value::String(raw.to_owned()),
    };
    let errors = schema::validate(schema, &value);
    (!errors.is_empty()).then(|| errors.join("; "))
}

impl Operation {
    /// Problems with the query string: unknown parameters, wrong types, missing required ones.
    /// Extra endpoints are not checked beyond their path.
    pub fn check_query(&self, query: &[(String, String)]) -> Vec<String> {
        if self.extra {
            return Vec::new();
        }
        let mut problems = Vec::new();
        for (name, value) in query {
            match self
                .params
                .iter()
                .find(|p| p.location == "query" && &p.name == name)
            {
                None => problems.push(format!("unknown query parameter `{name}`")),
                Some(p) => {
                    if let Some(problem) = check_scalar(&p.schema, value) {
                        problems.push(format!("query parameter `{name}`: {problem}"));
                    }
                }
            }
        }
        for p in self
            .params
            .iter()
            .filter(|p| p.location == "query" && p.required)
        {
            if !query.iter().any(|(n, _)| n == &p.name) {
                problems.push(format!("missing required query parameter `{}`", p.name));
            }
        }
        problems
    }

    /// Whether the operation takes a request body.
    pub fn takes_body(&self) -> bool {
        self.body_schema.is_some()
    }

    /// Whether the description says the body is required.
    pub fn body_required(&self) -> bool {
        self.body_required
    }

    /// Problems of a parsed JSON request body against the operation's request schema.
    pub fn check_body(&self, body: &Value) -> Vec<String> {
        match &self.body_schema {
            Some(schema) => schema::validate(schema, body),
            None => Vec::new(),
        }
    }

    /// The JSON schema of the response for `status`, if the description has one.
    pub fn response_schema(&self, status: u16) -> Option<&Value> {
        let content = self.responses.get(status.to_string())?.get("content")?;
        content
            .get("application/json")
            .or_else(|| content.as_object()?.values().next())?
            .get("schema")
    }

    /// Whether the description lists `status` for this operation.
    pub fn documents_status(&self, status: u16) -> bool {
        self.responses.get(status.to_string()).is_some()
    }

    /// GitHub's own example response for `status` (the one named `default`, else the first).
    pub fn example(&self, status: u16) -> Option<Value> {
        let content = self.responses.get(status.to_string())?.get("content")?;
        let examples = content
            .get("application/json")
            .or_else(|| content.as_object()?.values().next())?
            .get("examples")?
            .as_object()?;
        let example = examples
            .get("default")
            .or_else(|| examples.values().next())?
            .get("value")?;
        // A few examples wrap the value once more, beside `x-github-breaking-changes` notes.
        match example.as_object() {
            Some(map)
                if map.contains_key("value")
                    && map.keys().all(|k| k == "value" || k.starts_with("x-")) =>
            {
                map.get("value").cloned()
            }
            _ => Some(example.clone()),
        }
    }

    /// Adds, recursively, every property the response schema for `status` requires and `value`
    /// lacks, with a neutral value (`null` where nullable, else empty/zero/false). Used on
    /// objects that come from elsewhere (webhook payloads, examples) to make them REST objects.
    pub fn complete(&self, status: u16, value: &mut Value) {
        if let Some(schema) = self.response_schema(status) {
            if value.is_null() && schema["nullable"].as_bool() != Some(true) {
                *value = neutral(schema);
            }
            fill_required(schema, value);
        }
    }
}

fn fill_required(schema: &Value, value: &mut Value) {
    for branch in schema["allOf"].as_array().into_iter().flatten() {
        fill_required(branch, value);
    }
    if let Some(items) = value.as_array_mut() {
        for item in items {
            fill_required(&schema["items"], item);
        }
        return;
    }
    let Some(map) = value.as_object_mut() else {
        return;
    };
    for name in schema["required"].as_array().into_iter().flatten() {
        let Some(name) = name.as_str() else { continue };
        if !map.contains_key(name) {
            map.insert(name.to_owned(), neutral(&schema["properties"][name]));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            if let Some(v) = map.get_mut(name) {
                fill_required(prop, v);
            }
        }
    }
}

fn neutral(schema: &Value) -> Value {
    if schema["nullable"].as_bool() == Some(true) {
        return Value::Null;
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("string") => match schema["format"].as_str() {
            Some("date-time") => Value::from("1970-01-01T00:00:00Z"),
            Some("uri") => Value::from("https://github.com/"),
            _ => Value::from(""),
        },
        Some("integer") | Some("number") => Value::from(0),
        Some("boolean") => Value::Bool(false),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => {
            let mut v = Value::Object(serde_json::Map::new());
            fill_required(schema, &mut v);
            v
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_loads_with_all_paths_and_extras() {
        let c = contract();
        assert!(c.len() >= 47 + EXTRA_ENDPOINTS.len(), "{}", c.len());
        assert!(c.operation("repos/create-webhook").is_some());
    }

    #[test]
    fn githubs_own_examples_completed_pass_the_validator() {
        // Some of GitHub's examples lack required properties (`repos/get` has no `language`,
        // `apps/list-installations` accounts no `slug`, …): the fake completes what it serves.
        let mut failures = Vec::new();
        for op in contract().operations.iter().filter(|o| !o.extra) {
            for status in [200u16, 201, 202] {
                if let (Some(mut example), Some(schema)) =
                    (op.example(status), op.response_schema(status))
                {
                    op.complete(status, &mut example);
                    let problems = validate_schema(schema, &example);
                    if !problems.is_empty() {
                        failures.push(format!("{} {status}: {problems:?}", op.operation_id));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn matching_prefers_literals_and_checks_integer_params() {
        let c = contract();
        let m = c
            .match_request("PATCH", "/repos/o/r/issues/comments/5")
            .unwrap();
        assert_eq!(m.operation.operation_id, "issues/update-comment");
        let m = c
            .match_request("GET", "/repos/o/r/contents/a/b/c.md")
            .unwrap();
        assert_eq!(m.path_params["path"], "a/b/c.md");
        assert!(matches!(
            c.match_request("GET", "/repos/o/r/hooks/abc"),
            Err(NoMatch::BadPathParam(_))
        ));
        assert_eq!(
            c.match_request("PUT", "/repos/o/r/hooks/1").unwrap_err(),
            NoMatch::MethodNotAllowed
        );
        assert_eq!(
            c.match_request("GET", "/nope").unwrap_err(),
            NoMatch::UnknownPath
        );
        let m = c.match_request("GET", "/orgs/acme/hooks/7/config").unwrap();
        assert!(m.operation.extra);
    }
}
