//! A validator for OpenAPI 3.0 schema objects, the dialect GitHub's description is written in.
//!
//! OpenAPI 3.0 schemas are not JSON Schema: `nullable: true` widens a schema to accept `null`
//! (also across `oneOf` branches, where a plain JSON Schema translation would make `null` match
//! several branches and fail), and `example`, `deprecated`, `x-*` are annotations. The keywords
//! GitHub's document uses are all handled here: `type`, `nullable`, `enum`, `format` (`date-time`,
//! `uri`, `email`), `properties`, `required`, `additionalProperties`, `items`, `minItems`,
//! `maxItems`, `maxLength`, `minLength`, `minimum`, `maximum`, `allOf`, `anyOf`, `oneOf`.
//! It owns nothing but that check; it does not know about operations or HTTP.

use serde_json::Value;

/// Most problems reported for one value; past this the rest are dropped.
const MAX_ERRORS: usize = 20;

/// Checks `value` against `schema`; returns one line per problem, each naming the JSON path.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "$", &mut errors);
    errors
}

fn is_nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
        || ["oneOf", "anyOf"].iter().any(|k| {
            schema
                .get(*k)
                .and_then(Value::as_array)
                .is_some_and(|bs| bs.iter().any(is_nullable))
        })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn push(errors: &mut Vec<String>, at: &str, msg: String) {
    if errors.len() < MAX_ERRORS {
        errors.push(format!("{at}: {msg}"));
    }
}

fn check(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        return; // `true`/`{}`-like schemas accept everything
    };
    if value.is_null() {
        if is_nullable(schema) {
            return;
        }
        let constrained =
            obj.contains_key("type") || obj.contains_key("enum") || obj.contains_key("properties");
        if constrained {
            push(errors, at, "null is not allowed here (not nullable)".into());
            return;
        }
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str)
        && !type_matches(t, value)
    {
        push(
            errors,
            at,
            format!("expected {t}, got {}", type_name(value)),
        );
        return;
    }
    if let Some(options) = obj.get("enum").and_then(Value::as_array)
        && !options.iter().any(|o| o == value)
    {
        push(
            errors,
            at,
            format!("{value} is not one of {}", Value::Array(options.clone())),
        );
    }
    if let (Some(fmt), Some(s)) = (obj.get("format").and_then(Value::as_str), value.as_str())
        && let Some(problem) = check_format(fmt, s)
    {
        push(errors, at, problem);
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            push(errors, at, format!("longer than maxLength {max}"));
        }
        if let Some(min) = obj.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            push(errors, at, format!("shorter than minLength {min}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = obj.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            push(errors, at, format!("{n} is less than minimum {min}"));
        }
        if let Some(max) = obj.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            push(errors, at, format!("{n} is greater than maximum {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = obj.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            push(errors, at, format!("fewer than minItems {min}"));
        }
        if let Some(max) = obj.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            push(errors, at, format!("more than maxItems {max}"));
        }
        if let Some(item_schema) = obj.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{at}[{i}]"), errors);
            }
        }
    }
    if let Some(map) = value.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    push(errors, at, format!("missing required property `{name}`"));
                }
            }
        }
        for (key, val) in map {
            let child = format!("{at}.{key}");
            match props.and_then(|p| p.get(key)) {
                Some(prop_schema) => check(prop_schema, val, &child, errors),
                None => match obj.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        push(errors, at, format!("unknown property `{key}`"))
                    }
                    Some(extra @ Value::Object(_)) => check(extra, val, &child, errors),
                    _ => {}
                },
            }
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for branch in all {
            check(branch, value, at, errors);
        }
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|b| validate_at(b, value, at).is_empty())
    {
        push(errors, at, "matches none of the anyOf schemas".into());
    }
    if let Some(one) = obj.get("oneOf").and_then(Value::as_array)
        && !(value.is_null() && one.iter().any(is_nullable))
    {
        let matching = one
            .iter()
            .filter(|b| validate_at(b, value, at).is_empty())
            .count();
        if matching != 1 {
            let mut detail = String::new();
            if matching == 0 {
                // Say why the closest branch (same type) failed: that is what a reader needs.
                if let Some(first) = one.iter().find(|b| {
                    b.get("type")
                        .and_then(Value::as_str)
                        .is_none_or(|t| type_matches(t, value))
                }) {
                    detail = format!(" ({})", validate_at(first, value, at).join("; "));
                }
            }
            push(
                errors,
                at,
                format!("matches {matching} of the oneOf schemas, expected exactly 1{detail}"),
            );
        }
    }
}

fn validate_at(schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, at, &mut errors);
    errors
}

fn check_format(format: &str, s: &str) -> Option<String> {
    match format {
        "date-time" => {
            let rfc3339 = time::format_description::well_known::Rfc3339;
            time::OffsetDateTime::parse(s, &rfc3339)
                .err()
                .map(|e| format!("{s:?} is not an RFC 3339 date-time ({e})"))
        }
        // Real GitHub objects carry `""` in `uri` fields (a repository's `homepage`).
        "uri" if s.is_empty() => None,
        "uri" => {
            let scheme_ok = s.split_once(':').is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !rest.is_empty()
            });
            (!scheme_ok || s.contains(' ')).then(|| format!("{s:?} is not a URI"))
        }
        "email" => (!s.contains('@')).then(|| format!("{s:?} is not an email address")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nullable_oneof_accepts_null_once() {
        let s = json!({"oneOf": [{"type": "string", "nullable": true}, {"type": "integer", "nullable": true}]});
        assert!(validate(&s, &json!(null)).is_empty());
        assert!(validate(&s, &json!("a")).is_empty());
        assert!(!validate(&s, &json!(true)).is_empty());
    }

    #[test]
    fn type_required_and_additional_properties_are_checked() {
        let s = json!({"type": "object", "additionalProperties": false, "required": ["a"],
            "properties": {"a": {"type": "boolean"}, "b": {"type": "string", "enum": ["x"]}}});
        assert!(validate(&s, &json!({"a": true, "b": "x"})).is_empty());
        let errs = validate(&s, &json!({"a": "yes", "b": "y", "c": 1}));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("$.a: expected boolean"), "{errs:?}");
        assert!(!validate(&s, &json!({})).is_empty());
        assert!(!validate(&s, &json!(null)).is_empty());
    }

    #[test]
    fn formats_are_checked() {
        let s = json!({"type": "string", "format": "date-time"});
        assert!(validate(&s, &json!("2019-06-03T00:57:16Z")).is_empty());
        assert!(!validate(&s, &json!("yesterday")).is_empty());
        let u = json!({"type": "string", "format": "uri"});
        assert!(validate(&u, &json!("http://127.0.0.1:3000/x")).is_empty());
        assert!(!validate(&u, &json!("not a uri")).is_empty());
    }
}
