//! Reading fields out of a webhook payload by dotted path, with errors that name the event and
//! the missing field (a payload that lacks one will lack it on every attempt: permanent); and
//! parsing only the parts of a payload a handler reads ([`Prune`]).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::HandlerError;

/// A payload with its event label, for errors that name the missing field.
pub(crate) struct Payload<'a> {
    pub doc: &'a Value,
    pub label: String,
}

impl Payload<'_> {
    pub(crate) fn get(&self, path: &str) -> Option<&Value> {
        path.split('.')
            .try_fold(self.doc, |v, key| v.get(key))
            .filter(|v| !v.is_null())
    }

    pub(crate) fn missing(&self, path: &str, what: &str) -> HandlerError {
        HandlerError::Permanent(format!(
            "{} payload: field `{path}` is missing or not {what}",
            self.label
        ))
    }

    pub(crate) fn i64(&self, path: &str) -> Result<i64, HandlerError> {
        self.opt_i64(path)
            .ok_or_else(|| self.missing(path, "an integer"))
    }

    pub(crate) fn opt_i64(&self, path: &str) -> Option<i64> {
        self.get(path).and_then(Value::as_i64)
    }

    pub(crate) fn str(&self, path: &str) -> Result<&str, HandlerError> {
        self.opt_str(path)
            .ok_or_else(|| self.missing(path, "a string"))
    }

    pub(crate) fn opt_str(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(Value::as_str)
    }

    pub(crate) fn string(&self, path: &str) -> Result<String, HandlerError> {
        self.str(path).map(str::to_owned)
    }

    pub(crate) fn opt_string(&self, path: &str) -> Option<String> {
        self.opt_str(path).map(str::to_owned)
    }

    pub(crate) fn bool_or_false(&self, path: &str) -> bool {
        self.get(path).and_then(Value::as_bool).unwrap_or(false)
    }

    /// An RFC 3339 time; an integer is taken as Unix seconds (as some payloads write
    /// `repository.pushed_at`).
    pub(crate) fn opt_time(&self, path: &str) -> Result<Option<i64>, HandlerError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(text)) => parse_time(text)
                .map(Some)
                .ok_or_else(|| self.missing(path, "an RFC 3339 time")),
            Some(v) => v
                .as_i64()
                .and_then(|secs| secs.checked_mul(1000))
                .map(Some)
                .ok_or_else(|| self.missing(path, "a time")),
        }
    }

    pub(crate) fn time(&self, path: &str) -> Result<i64, HandlerError> {
        self.opt_time(path)?
            .ok_or_else(|| self.missing(path, "an RFC 3339 time"))
    }

    pub(crate) fn repository(&self) -> Result<String, HandlerError> {
        self.string("repository.full_name")
    }
}

/// `owner/name` as its two parts when both are names GitHub allows (letters, digits, `-`, `_`,
/// `.`, not `.` or `..`), so neither can change a request path built from them.
pub(crate) fn owner_and_name(repo: &str) -> Option<(&str, &str)> {
    let valid = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    repo.split_once('/')
        .filter(|(owner, name)| valid(owner) && valid(name))
}

/// RFC 3339 text as Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Which parts of a JSON document to build. GitHub's payloads repeat whole repository and user
/// objects (a `pull_request.opened` is ~21 KB, mostly URLs) that most handlers never read;
/// leaving them out skips their allocations, most of a full parse's cost. The bytes are still
/// read through, so a malformed document fails as it would in a full parse.
#[derive(Debug)]
pub(crate) enum Prune {
    /// The whole value.
    Keep,
    /// Left out, as if absent.
    Drop,
    /// An object's listed members as given and every other member as `rest`; a value that is
    /// not an object is kept whole.
    Object {
        members: &'static [(&'static str, Prune)],
        rest: &'static Prune,
    },
    /// An object of which only the named members are kept, each whole; a value that is not an
    /// object is kept whole.
    Fields(&'static [&'static str]),
    /// An array's every element as given (a dropped element is kept as `null`, so the array
    /// keeps its length); a value that is not an array is kept whole.
    Each(&'static Prune),
}

impl Prune {
    /// An object of which only `members` are kept whole.
    pub(crate) const fn only(members: &'static [(&'static str, Prune)]) -> Prune {
        Prune::Object {
            members,
            rest: &Prune::Drop,
        }
    }

    fn member(&self, key: &str) -> &Prune {
        match self {
            Prune::Object { members, rest } => members
                .iter()
                .find(|(name, _)| *name == key)
                .map_or(*rest, |(_, prune)| prune),
            Prune::Fields(names) if names.contains(&key) => &Prune::Keep,
            Prune::Fields(_) => &Prune::Drop,
            Prune::Each(_) => &Prune::Keep,
            other => other,
        }
    }
}

/// Parses `bytes` as one JSON document, building only what `prune` keeps.
pub(crate) fn parse_pruned(bytes: &[u8], prune: &Prune) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Pruned(prune).deserialize(&mut de)?;
    de.end()?;
    Ok(value.unwrap_or(Value::Null))
}

/// Deserializes a value as its [`Prune`] says; `None` when it is dropped.
struct Pruned<'p>(&'p Prune);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        match self.0 {
            Prune::Keep => serde::Deserialize::deserialize(d).map(Some),
            Prune::Drop => serde::Deserialize::deserialize(d).map(|IgnoredAny| None),
            object => d.deserialize_any(ObjectVisitor(object)).map(Some),
        }
    }
}

/// Builds an object member by member or an array element by element, and any other value
/// whole.
struct ObjectVisitor<'p>(&'p Prune);

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            match key {
                Some((name, prune)) => {
                    if let Some(value) = map.next_value_seed(Pruned(prune))? {
                        out.insert(name, value);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let element = match self.0 {
            Prune::Each(element) => element,
            _ => &Prune::Keep,
        };
        let mut out = Vec::new();
        while let Some(value) = seq.next_element_seed(Pruned(element))? {
            out.push(value.unwrap_or(Value::Null));
        }
        Ok(Value::Array(out))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
}

/// An object's key: its name and how to build its value, or `None` when the value is dropped
/// (the name is then not copied).
struct Key<'p>(&'p Prune);

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<(String, &'p Prune)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for Key<'p> {
    type Value = Option<(String, &'p Prune)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(match self.0.member(key) {
            Prune::Drop => None,
            prune => Some((key.to_owned(), prune)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const USER: Prune = Prune::only(&[("login", Prune::Keep)]);
    const SPEC: Prune = Prune::only(&[
        ("repository", Prune::Fields(&["full_name"])),
        (
            "pull_request",
            Prune::Object {
                members: &[("user", USER), ("_links", Prune::Drop)],
                rest: &Prune::Keep,
            },
        ),
        ("list", Prune::Keep),
    ]);

    #[test]
    fn keeps_what_the_spec_names_and_nothing_else() {
        let doc =
            br#"{"action":"opened","repository":{"full_name":"o/r","id":1,"owner":{"login":"o"}},
            "pull_request":{"number":7,"title":"t\"q\u00e9","user":{"login":"u","id":3,"url":"x"},
              "_links":{"self":{"href":"h"}},"head":{"ref":"f"},"labels":[{"name":"bug"}],
              "body":null,"draft":false,"additions":1.5},
            "list":[1,{"a":[2]}],"sender":{"login":"s"}}"#;
        let pruned = parse_pruned(doc, &SPEC).unwrap();
        assert_eq!(
            pruned,
            json!({
                "repository": {"full_name": "o/r"},
                "pull_request": {"number": 7, "title": "t\"qé", "user": {"login": "u"},
                    "head": {"ref": "f"}, "labels": [{"name": "bug"}], "body": null,
                    "draft": false, "additions": 1.5},
                "list": [1, {"a": [2]}],
            })
        );
        // Keep everywhere is a whole parse.
        let whole: Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(parse_pruned(doc, &Prune::Keep).unwrap(), whole);
    }

    #[test]
    fn a_value_that_is_not_the_object_expected_is_kept_whole() {
        let doc = br#"{"repository":null,"pull_request":[{"user":{"id":1}}],"list":"x"}"#;
        assert_eq!(
            parse_pruned(doc, &SPEC).unwrap(),
            json!({"repository": null, "pull_request": [{"user": {"id": 1}}], "list": "x"})
        );
        assert_eq!(parse_pruned(b"[1,2]", &SPEC).unwrap(), json!([1, 2]));
    }

    #[test]
    fn each_element_of_an_array_is_pruned_and_counted() {
        const EACH: Prune = Prune::only(&[
            ("commits", Prune::Each(&USER)),
            ("ids", Prune::Each(&Prune::Drop)),
        ]);
        let doc = br#"{"commits":[{"login":"a","id":1},7,{"id":2},[{"login":"b"}]],
            "ids":[1,{"x":2}],"other":[1]}"#;
        assert_eq!(
            parse_pruned(doc, &EACH).unwrap(),
            json!({"commits": [{"login": "a"}, 7, {}, [{"login": "b"}]], "ids": [null, null]})
        );
        // Not an array: kept whole, as an object given to `only` that is not one.
        assert_eq!(
            parse_pruned(br#"{"commits":{"login":"a","id":1},"ids":"x"}"#, &EACH).unwrap(),
            json!({"commits": {"login": "a", "id": 1}, "ids": "x"})
        );
    }

    #[test]
    fn malformed_documents_fail_even_in_parts_left_out() {
        for bad in [
            &br#"{"sender":{"login":"s",}}"#[..],
            br#"{"sender":{"login":"s"}"#,
            br#"{"repository":{"full_name":"o/r"}} trailing"#,
            br#"{"sender":"\x"}"#,
            b"",
        ] {
            assert!(
                parse_pruned(bad, &SPEC).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
