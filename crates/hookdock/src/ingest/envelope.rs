//! What hookdock reads from a delivery body: content-type handling (JSON or the
//! `payload=` form field) and one pass over the JSON that validates it and keeps only the few
//! fields routing needs (action, repository, organization, installation, sender, number).
//!
//! Field extraction is lenient about types: a genuine delivery whose `repository` or `number`
//! has an unexpected shape is still accepted (that field is just absent); only invalid JSON is
//! refused.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The two encodings GitHub can be configured to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Form,
}

impl ContentType {
    /// Classifies a `Content-Type` header value; parameters such as `charset` are ignored.
    pub fn parse(header: &str) -> Option<ContentType> {
        let essence = header.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Some(ContentType::Json)
        } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(ContentType::Form)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// Why a signed body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("form-encoded delivery has no `payload` field")]
    MissingFormPayload,
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object, as GitHub sends")]
    NotAnObject,
    /// A routing field given twice, so which one counts is unclear (GitHub never does this).
    #[error("body names a field twice ({0}); GitHub sends each field once")]
    DuplicateField(String),
}

/// The JSON document of a delivery: the body itself, or the decoded `payload` form field.
pub fn json_document(content_type: ContentType, body: &[u8]) -> Result<Cow<'_, [u8]>, BodyError> {
    match content_type {
        ContentType::Json => Ok(Cow::Borrowed(body)),
        ContentType::Form => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| Cow::Owned(v.into_owned().into_bytes()))
            .ok_or(BodyError::MissingFormPayload),
    }
}

/// Routing fields of a delivery, borrowed from the JSON document where possible.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub action: Option<Cow<'a, str>>,
    pub repository: Option<Cow<'a, str>>,
    pub repository_id: Option<i64>,
    pub organization: Option<Cow<'a, str>>,
    pub installation_id: Option<i64>,
    pub sender: Option<Cow<'a, str>>,
    /// Pull request or issue number, for per-item ordering.
    pub number: Option<i64>,
}

impl<'a> Envelope<'a> {
    /// Validates `json` as a whole and extracts the routing fields in a single pass.
    pub fn parse(json: &'a [u8]) -> Result<Envelope<'a>, BodyError> {
        // A derived struct would also accept a JSON array; GitHub always sends an object.
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return match serde_json::from_slice::<IgnoredAny>(json) {
                Ok(_) => Err(BodyError::NotAnObject),
                Err(e) => Err(BodyError::InvalidJson(e.to_string())),
            };
        }
        let raw: RawEnvelope<'a> = match serde_json::from_slice(json) {
            Ok(raw) => raw,
            // Every field is lenient about its shape, so the only data error left is a field
            // named twice.
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(BodyError::DuplicateField(e.to_string()));
            }
            Err(e) => return Err(BodyError::InvalidJson(e.to_string())),
        };
        let repo = raw.repository.0;
        Ok(Envelope {
            action: raw.action.0,
            repository: repo.as_ref().and_then(|r| r.full_name.0.clone()),
            repository_id: repo.as_ref().and_then(|r| r.id.0),
            organization: raw.organization.0.and_then(|o| o.login.0),
            installation_id: raw.installation.0.and_then(|i| i.id.0),
            sender: raw.sender.0.and_then(|s| s.login.0),
            number: raw
                .pull_request
                .0
                .and_then(|p| p.number.0)
                .or_else(|| raw.issue.0.and_then(|i| i.number.0))
                .or(raw.number.0),
        })
    }

    /// Jobs with the same key run one at a time per handler: one pull request or issue, else
    /// one repository, else one organization. Deliveries about nothing in particular get a key
    /// of their own and never wait for each other.
    pub fn ordering_key(&self, delivery_id: &str) -> String {
        match (&self.repository, self.number, &self.organization) {
            (Some(repo), Some(n), _) => format!("{repo}#{n}"),
            (Some(repo), None, _) => repo.to_string(),
            (None, _, Some(org)) => format!("org:{org}"),
            _ => format!("delivery:{delivery_id}"),
        }
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(default, borrow)]
    action: Lenient<Cow<'a, str>>,
    #[serde(default, borrow)]
    repository: Lenient<Repo<'a>>,
    #[serde(default, borrow)]
    organization: Lenient<Login<'a>>,
    #[serde(default)]
    installation: Lenient<Ided>,
    #[serde(default, borrow)]
    sender: Lenient<Login<'a>>,
    #[serde(default)]
    pull_request: Lenient<Numbered>,
    #[serde(default)]
    issue: Lenient<Numbered>,
    #[serde(default)]
    number: Lenient<i64>,
}

#[derive(Deserialize)]
struct Repo<'a> {
    #[serde(default, borrow)]
    full_name: Lenient<Cow<'a, str>>,
    #[serde(default)]
    id: Lenient<i64>,
}

#[derive(Deserialize)]
struct Login<'a> {
    #[serde(default, borrow)]
    login: Lenient<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Ided {
    #[serde(default)]
    id: Lenient<i64>,
}

#[derive(Deserialize)]
struct Numbered {
    #[serde(default)]
    number: Lenient<i64>,
}

/// A field that is `Some` when it has the expected shape and `None` otherwise (null, or another
/// type). The value is still consumed, so the JSON as a whole is still validated.
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

/// Shapes `Lenient` knows how to read.
trait LenientShape<'de>: Sized {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        let _ = s;
        None
    }
    fn from_i64(n: i64) -> Option<Self> {
        let _ = n;
        None
    }
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        skip_map(map).map(|_| None)
    }
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de: 'a, 'a> LenientShape<'de> for Cow<'a, str> {
    fn from_str(s: Cow<'de, str>) -> Option<Self> {
        Some(s)
    }
}

impl LenientShape<'_> for i64 {
    fn from_i64(n: i64) -> Option<Self> {
        Some(n)
    }
}

macro_rules! object_shape {
    ($($t:ty),*) => {$(
        impl<'de: 'a, 'a> LenientShape<'de> for $t {
            fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                <$t>::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
    )*};
}
object_shape!(Repo<'a>, Login<'a>);

macro_rules! owned_object_shape {
    ($($t:ty),*) => {$(
        impl<'de> LenientShape<'de> for $t {
            fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                <$t>::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
    )*};
}
owned_object_shape!(Ided, Numbered);

impl<'de, T: LenientShape<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: LenientShape<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(Cow::Owned(v.to_owned()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_i64(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Lenient(i64::try_from(v).ok().and_then(T::from_i64)))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::from_map(map).map(Lenient)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Event names GitHub sends in `X-GitHub-Event`. Anything else is answered `ignored` and not
/// stored: it cannot come from GitHub, and a 4xx would only make GitHub record a failure.
pub const KNOWN_EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "content_reference",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issue_dependencies",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "projects_v2_status_update",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "secret_scanning_scan",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

pub fn is_known_event(name: &str) -> bool {
    KNOWN_EVENTS.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_events_are_sorted_for_binary_search() {
        let mut sorted = KNOWN_EVENTS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, KNOWN_EVENTS);
        assert!(is_known_event("pull_request") && !is_known_event("pull_requests"));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            ContentType::parse("application/json"),
            Some(ContentType::Json)
        );
        assert_eq!(
            ContentType::parse("Application/JSON; charset=utf-8"),
            Some(ContentType::Json)
        );
        assert_eq!(
            ContentType::parse("application/x-www-form-urlencoded"),
            Some(ContentType::Form)
        );
        assert_eq!(ContentType::parse("text/plain"), None);
        assert_eq!(ContentType::parse(""), None);
    }

    #[test]
    fn extracts_routing_fields_of_a_pull_request() {
        let json = br#"{"action":"opened","number":7,"pull_request":{"number":7,"title":"x"},
            "repository":{"id":12,"full_name":"octo/hello","owner":{"login":"octo"}},
            "installation":{"id":99},"sender":{"login":"alice","type":"User"}}"#;
        let e = Envelope::parse(json).unwrap();
        assert_eq!(e.action.as_deref(), Some("opened"));
        assert_eq!(e.repository.as_deref(), Some("octo/hello"));
        assert_eq!(e.repository_id, Some(12));
        assert_eq!(e.installation_id, Some(99));
        assert_eq!(e.sender.as_deref(), Some("alice"));
        assert_eq!(e.number, Some(7));
        assert_eq!(e.ordering_key("d"), "octo/hello#7");
    }

    #[test]
    fn unexpected_shapes_are_absent_not_errors() {
        let json = br#"{"action":5,"repository":"octo/hello","issue":{"number":"7"},
            "organization":null,"sender":[1,2],"installation":{"id":1.5}}"#;
        let e = Envelope::parse(json).unwrap();
        assert_eq!(e, Envelope::default());
        assert_eq!(e.ordering_key("abc"), "delivery:abc");
        let org = Envelope::parse(br#"{"organization":{"login":"acme"}}"#).unwrap();
        assert_eq!(org.ordering_key("abc"), "org:acme");
    }

    #[test]
    fn invalid_json_and_non_objects_are_refused() {
        assert!(matches!(
            Envelope::parse(b"{\"a\":"),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b"{} trailing"),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b""),
            Err(BodyError::InvalidJson(_))
        ));
        assert_eq!(Envelope::parse(b"[1]"), Err(BodyError::NotAnObject));
        assert_eq!(Envelope::parse(b"\"s\""), Err(BodyError::NotAnObject));
    }

    #[test]
    fn a_routing_field_named_twice_is_refused_as_such() {
        for (json, field) in [
            (&br#"{"action":"opened","action":"closed"}"#[..], "`action`"),
            (
                br#"{"repository":{"full_name":"o/a","full_name":"o/b"}}"#,
                "`full_name`",
            ),
        ] {
            let err = Envelope::parse(json).unwrap_err();
            assert!(
                matches!(&err, BodyError::DuplicateField(m) if m.contains(field)),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("body names a field twice (duplicate field"),
                "{err}"
            );
        }
        // Fields hookdock does not read may repeat: they are not validated.
        assert!(Envelope::parse(br#"{"zen":"a","zen":"b"}"#).is_ok());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let e = Envelope::parse(br#"{"repository":{"full_name":"o\/r"}}"#).unwrap();
        assert_eq!(e.repository.as_deref(), Some("o/r"));
    }

    #[test]
    fn form_payload_is_decoded() {
        let body = b"payload=%7B%22action%22%3A%22opened%22%7D";
        let doc = json_document(ContentType::Form, body).unwrap();
        assert_eq!(&*doc, br#"{"action":"opened"}"#);
        assert_eq!(
            json_document(ContentType::Form, b"other=1"),
            Err(BodyError::MissingFormPayload)
        );
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Envelope::parse(&bytes);
            let _ = json_document(ContentType::Form, &bytes);
        }

        #[test]
        fn json_values_never_panic(v in arb_json()) {
            let text = serde_json::to_vec(&v).unwrap();
            let parsed = Envelope::parse(&text);
            prop_assert_eq!(parsed.is_ok(), v.is_object());
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z/]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("action".to_owned()),
                        Just("repository".to_owned()),
                        Just("full_name".to_owned()),
                        Just("number".to_owned()),
                        Just("id".to_owned()),
                        Just("login".to_owned()),
                        "[a-z]{1,5}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
