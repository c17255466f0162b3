//! Offline check of an object against a CRD's structural OpenAPI v3 schema.
//!
//! This follows what the API server does at admission for the schema
//! keywords our CRDs use (type, required, enum, minimum/maximum,
//! minLength/maxLength, minItems/maxItems, format uuid/date-time, nullable)
//! and what `kubectl apply` does with strict field validation (its default):
//! an unknown field is an error, so a typo such as `perMinuteDay` is caught
//! instead of silently pruned. A JSON-Schema crate would not know
//! `nullable` or the `x-kubernetes-*` extensions, and would not name fields
//! the way `kubectl` does.

use serde_json::{Map, Value};

/// One schema violation: the field path (`spec.tiers.public.dailyDays`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
    /// Whether CEL rules over this field cannot be evaluated meaningfully
    /// (a wrong type, a missing required field, an unparseable format): the
    /// API server skips the rules then, and so does `validate`, for the
    /// nodes above it only.
    pub blocks_rules: bool,
}

/// Checks `value` against `schema`, returning every violation found.
pub(crate) fn check(schema: &Value, value: &Value) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    check_node(schema, value, "", &mut violations);
    violations
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn push(out: &mut Vec<FieldViolation>, path: &str, reason: String) {
    add(out, path, reason, false);
}

/// A violation that leaves the value unusable by CEL rules.
fn push_blocking(out: &mut Vec<FieldViolation>, path: &str, reason: String) {
    add(out, path, reason, true);
}

fn add(out: &mut Vec<FieldViolation>, path: &str, reason: String, blocks_rules: bool) {
    out.push(FieldViolation {
        field: if path.is_empty() {
            "<root>".into()
        } else {
            path.to_string()
        },
        reason,
        blocks_rules,
    });
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
        "number" => value.is_number(),
        other => type_name(value) == other,
    }
}

fn check_node(schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldViolation>) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || type_name(value) == "integer") {
            push_blocking(
                out,
                path,
                format!("must be an integer or a string, got {}", type_name(value)),
            );
        }
        return;
    }
    if value.is_null() {
        if !flag(schema, "nullable") {
            push_blocking(out, path, "must not be null".into());
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !type_matches(expected, value)
    {
        push_blocking(
            out,
            path,
            format!("must be of type {expected}, got {}", type_name(value)),
        );
        return;
    }
    check_enum(schema, value, path, out);
    match value {
        Value::Object(fields) => check_object(schema, fields, path, out),
        Value::Array(items) => check_array(schema, items, path, out),
        Value::String(text) => check_string(schema, text, path, out),
        Value::Number(_) => check_number(schema, value, path, out),
        _ => {}
    }
}

fn flag(schema: &Map<String, Value>, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn check_enum(
    schema: &Map<String, Value>,
    value: &Value,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        push(
            out,
            path,
            format!("must be one of {}, got {value}", list.join(", ")),
        );
    }
}

fn check_object(
    schema: &Map<String, Value>,
    fields: &Map<String, Value>,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let preserve_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields");
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                push_blocking(out, &join(path, name), "required field is missing".into());
            }
        }
    }
    for (name, child) in fields {
        let child_path = join(path, name);
        match (properties.and_then(|p| p.get(name)), additional) {
            (Some(child_schema), _) => check_node(child_schema, child, &child_path, out),
            (None, Some(Value::Object(additional_schema))) => check_node(
                &Value::Object(additional_schema.clone()),
                child,
                &child_path,
                out,
            ),
            (None, Some(Value::Bool(true))) => {}
            (None, _) if preserve_unknown || properties.is_none() => {}
            (None, _) => push(out, &child_path, "unknown field".into()),
        }
    }
}

fn check_array(
    schema: &Map<String, Value>,
    items: &[Value],
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        push(out, path, format!("must have at least {min} items"));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && (items.len() as u64) > max
    {
        push(out, path, format!("must have at most {max} items"));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check_node(item_schema, item, &format!("{path}[{i}]"), out);
        }
    }
}

fn check_string(
    schema: &Map<String, Value>,
    text: &str,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    let length = text.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && length < min
    {
        push(out, path, format!("must be at least {min} characters long"));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && length > max
    {
        push(out, path, format!("must be at most {max} characters long"));
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("uuid") if uuid::Uuid::try_parse(text).is_err() => {
            push_blocking(out, path, format!("must be a UUID, got {text:?}"));
        }
        Some("date-time") if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
            push_blocking(
                out,
                path,
                format!("must be an RFC 3339 date-time, got {text:?}"),
            );
        }
        _ => {}
    }
}

fn check_number(
    schema: &Map<String, Value>,
    value: &Value,
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    let Some(number) = value.as_f64() else {
        return;
    };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && number < min
    {
        push(out, path, format!("must be >= {min}, got {value}"));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && number > max
    {
        push(out, path, format!("must be <= {max}, got {value}"));
    }
    // Rust integer types carry their width as a format; the API server would
    // overflow silently, so reject what the operator could not read back.
    let bounds = match schema.get("format").and_then(Value::as_str) {
        Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
        Some("uint32") => Some((0.0, f64::from(u32::MAX))),
        Some("uint16") => Some((0.0, f64::from(u16::MAX))),
        Some("uint8") => Some((0.0, f64::from(u8::MAX))),
        _ => None,
    };
    if let Some((lo, hi)) = bounds
        && (number < lo || number > hi)
    {
        push(
            out,
            path,
            format!("is out of range ({lo}..={hi}), got {value}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["days"],
                    "properties": {
                        "days": {"type": "integer", "minimum": 1, "format": "uint32"},
                        "id": {"type": "string", "format": "uuid"},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "at": {"type": "string", "format": "date-time", "nullable": true},
                        "list": {"type": "array", "items": {"type": "string", "minLength": 2}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                }
            }
        })
    }

    fn fields(value: Value) -> Vec<String> {
        check(&schema(), &value)
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.reason))
            .collect()
    }

    #[test]
    fn valid_object_passes() {
        let ok = json!({"spec": {"days": 3, "id": "6f1c2a3b-0000-4000-8000-000000000001", "mode": "a",
            "at": null, "list": ["ab"], "labels": {"x": "y"}}});
        assert_eq!(fields(ok), Vec::<String>::new());
    }

    #[test]
    fn each_violation_names_its_field() {
        assert_eq!(fields(json!({})), vec!["spec: required field is missing"]);
        assert_eq!(
            fields(json!({"spec": {"days": 0}})),
            vec!["spec.days: must be >= 1, got 0"]
        );
        assert_eq!(
            fields(json!({"spec": {"days": "3"}})),
            vec!["spec.days: must be of type integer, got string"]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 1, "dayz": 1}})),
            vec!["spec.dayz: unknown field"]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 1, "id": "nope"}})),
            vec!["spec.id: must be a UUID, got \"nope\""]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 1, "mode": "c"}})),
            vec!["spec.mode: must be one of \"a\", \"b\", got \"c\""]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 1, "list": ["a"]}})),
            vec!["spec.list[0]: must be at least 2 characters long"]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 1, "labels": {"x": 1}}})),
            vec!["spec.labels.x: must be of type string, got integer"]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 5000000000u64}})),
            vec!["spec.days: is out of range (0..=4294967295), got 5000000000"]
        );
        assert_eq!(
            fields(json!({"spec": {"days": 1, "at": "yesterday"}})),
            vec!["spec.at: must be an RFC 3339 date-time, got \"yesterday\""]
        );
    }
}
