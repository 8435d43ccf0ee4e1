//! Reading fields out of a webhook payload by dotted path, with errors that name the event and
//! the missing field (a payload that lacks one will lack it on every attempt: permanent).

use serde_json::Value;

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
