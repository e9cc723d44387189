//! Specialist agents as data: their definition, the provider-neutral conversation they hold
//! with a model, and the check of their output against a JSON Schema. Pure: the model calls
//! and tool calls happen in `src/engine/agent.rs`, behind the engine's gates.

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An agent: a role with instructions, a model, the tools it may use and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDef {
    pub name: String,
    /// What the agent is called in the thread ("Researcher").
    pub role: String,
    /// A model name from `BATON_MODELS` (`default`, `fast`).
    pub model: String,
    /// Template over the run context: the system prompt.
    pub instructions: String,
    /// The only tools the agent may call.
    pub tools: Vec<String>,
    /// Model turns before the agent must have answered.
    pub max_turns: u32,
    /// Output tokens per model call.
    pub max_output_tokens: u32,
    /// Wall-clock limit of the whole step.
    pub timeout: Duration,
    /// Tokens (in + out) all agents together may have spent in the run before this agent's
    /// next model call.
    pub token_budget: Option<u64>,
    /// When set, the answer must be JSON matching this schema.
    pub output_schema: Option<Value>,
    /// Memory namespaces the agent may read and write (`company`, or `leads/*` for every
    /// namespace under `leads/`); empty means all. Memory is shared by every later run, so
    /// an agent that reads untrusted pages should not write where others read.
    pub memory: Vec<String>,
}

impl AgentDef {
    /// Whether the agent may use a memory namespace.
    pub fn may_use_memory(&self, namespace: &str) -> bool {
        self.memory.is_empty()
            || self.memory.iter().any(|m| match m.strip_suffix('*') {
                Some(prefix) => namespace.starts_with(prefix),
                None => m == namespace,
            })
    }
}

/// A tool call the model proposed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// One message of an agent's conversation, as persisted turn by turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Turn {
    /// The task (and later, a correction such as a schema error).
    User { text: String },
    /// What the model answered: text and/or tool calls.
    Assistant {
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        #[serde(default)]
        tokens_in: u64,
        #[serde(default)]
        tokens_out: u64,
    },
    /// A tool's result (or refusal) for one call.
    Tool {
        call_id: String,
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// A person's decision on an agent's external tool call, bound to the payload they saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDecision {
    pub call_id: String,
    /// [`payload_hash`] of the tool and arguments shown in the approval.
    pub payload_hash: String,
    pub approved: bool,
    /// Who decided, as the thread shows them (`@ben`), or why nobody did (`expiry`).
    pub by: String,
    pub reason: Option<String>,
}

/// The hash a decision is bound to: SHA-256 over the tool's name and its arguments, written
/// with sorted keys so the same payload always hashes the same.
pub fn payload_hash(tool: &str, args: &Value) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, canonical(v))).collect();
                serde_json::to_value(sorted).unwrap_or(Value::Null)
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    use sha2::{Digest, Sha256};
    let text = serde_json::json!({"tool": tool, "args": canonical(args)}).to_string();
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Turn {
    pub fn tokens(&self) -> u64 {
        match self {
            Turn::Assistant {
                tokens_in,
                tokens_out,
                ..
            } => tokens_in + tokens_out,
            _ => 0,
        }
    }
}

/// The keywords Baton checks; a schema using others is refused by `baton check` rather than
/// half-enforced.
const KEYWORDS: [&str; 17] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "description",
    "title",
    "$schema",
    "default",
    "const",
];
const TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "null",
];

/// Whether a schema is one Baton can enforce.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_schema_at(schema, "")
}

fn check_schema_at(schema: &Value, at: &str) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err(format!("schema{at} must be a table"));
    };
    for key in obj.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!(
                "schema{at}: keyword `{key}` is not supported ({})",
                KEYWORDS.join(", ")
            ));
        }
    }
    match &obj.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(t) => {
            return Err(format!(
                "schema{at}: `type` {t} is not one of {}",
                TYPES.join(", ")
            ));
        }
    }
    if let Some(props) = obj.get("properties") {
        let Some(props) = props.as_object() else {
            return Err(format!("schema{at}: `properties` must be a table"));
        };
        for (name, sub) in props {
            check_schema_at(sub, &format!("{at}.{name}"))?;
        }
    }
    if let Some(req) = obj.get("required")
        && !req
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
    {
        return Err(format!("schema{at}: `required` must be a list of names"));
    }
    if let Some(items) = obj.get("items") {
        check_schema_at(items, &format!("{at}[]"))?;
    }
    if let Some(e) = obj.get("enum")
        && e.as_array().is_none_or(|e| e.is_empty())
    {
        return Err(format!(
            "schema{at}: `enum` must be a list of at least one value"
        ));
    }
    if obj
        .get("type")
        .and_then(Value::as_array)
        .is_some_and(|t| t.is_empty())
    {
        return Err(format!("schema{at}: `type` lists no type"));
    }
    // Only `false` is enforced; a schema for the extra properties would be half-enforced.
    if obj
        .get("additionalProperties")
        .is_some_and(|a| !a.is_boolean())
    {
        return Err(format!(
            "schema{at}: `additionalProperties` must be true or false"
        ));
    }
    for k in ["minimum", "maximum"] {
        if obj.get(k).is_some_and(|v| !v.is_number()) {
            return Err(format!("schema{at}: `{k}` must be a number"));
        }
    }
    for k in ["minLength", "maxLength", "minItems", "maxItems"] {
        if obj.get(k).is_some_and(|v| !v.is_u64()) {
            return Err(format!("schema{at}: `{k}` must be a whole number"));
        }
    }
    Ok(())
}

/// Checks a value against a schema; the error names the first place that does not fit.
pub fn validate(value: &Value, schema: &Value) -> Result<(), String> {
    validate_at(value, schema, "$")
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        // 1.0 is a whole number too.
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_at(v: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let fits = |t: &str| t == type_of(v) || (t == "number" && type_of(v) == "integer");
    match schema.get("type") {
        Some(Value::String(t)) if !fits(t) => {
            return Err(format!("{at} should be {t}, not {}", type_of(v)));
        }
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(fits) => {
            return Err(format!("{at} should be one of {ts:?}, not {}", type_of(v)));
        }
        _ => {}
    }
    // Numbers compare by value: 1 and 1.0 are the same answer.
    let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.iter().any(|c| same(c, v))
    {
        return Err(format!(
            "{at} should be one of {}",
            Value::Array(choices.clone())
        ));
    }
    if let Some(c) = schema.get("const")
        && !same(c, v)
    {
        return Err(format!("{at} should be {c}"));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if num("minimum").is_some_and(|m| x < m) {
            return Err(format!(
                "{at} should be at least {}",
                num("minimum").unwrap_or_default()
            ));
        }
        if num("maximum").is_some_and(|m| x > m) {
            return Err(format!(
                "{at} should be at most {}",
                num("maximum").unwrap_or_default()
            ));
        }
    }
    let count = |k: &str| schema.get(k).and_then(Value::as_u64).map(|n| n as usize);
    if let Some(s) = v.as_str() {
        let n = s.chars().count();
        if count("minLength").is_some_and(|m| n < m) || count("maxLength").is_some_and(|m| n > m) {
            return Err(format!(
                "{at} has a length of {n}, outside what the schema allows"
            ));
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len();
        if count("minItems").is_some_and(|m| n < m) || count("maxItems").is_some_and(|m| n > m) {
            return Err(format!(
                "{at} has {n} items, outside what the schema allows"
            ));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_at(item, item_schema, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(name) {
                return Err(format!("{at}.{name} is required"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (name, value) in obj {
            match props.and_then(|p| p.get(name)) {
                Some(sub) => validate_at(value, sub, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}.{name} is not allowed"));
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// The JSON an answer holds: the whole text, or the first fenced block in it.
pub fn json_in(text: &str) -> Option<Value> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Some(v);
    }
    let start = t.find("```")?;
    let rest = &t[start + 3..];
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    let end = rest.find("```")?;
    serde_json::from_str(rest[..end].trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ticket() -> Value {
        json!({
            "type": "object",
            "required": ["category", "confidence"],
            "additionalProperties": false,
            "properties": {
                "category": {"type": "string", "enum": ["billing", "bug", "other"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}
            }
        })
    }

    #[test]
    fn an_answer_that_fits_the_schema_passes_and_one_that_does_not_says_where() {
        let s = ticket();
        assert!(validate(&json!({"category": "bug", "confidence": 0.9}), &s).is_ok());
        assert_eq!(
            validate(&json!({"category": "bug"}), &s).unwrap_err(),
            "$.confidence is required"
        );
        assert!(
            validate(&json!({"category": "spam", "confidence": 1}), &s)
                .unwrap_err()
                .starts_with("$.category should be one of")
        );
        assert!(
            validate(&json!({"category": "bug", "confidence": 2}), &s)
                .unwrap_err()
                .contains("at most 1")
        );
        assert!(
            validate(&json!({"category": "bug", "confidence": 1, "x": 1}), &s)
                .unwrap_err()
                .contains("$.x is not allowed")
        );
        assert!(
            validate(
                &json!({"category": "bug", "confidence": 1, "tags": [1]}),
                &s
            )
            .unwrap_err()
            .contains("$.tags[0] should be string")
        );
        assert!(
            validate(&json!("text"), &s)
                .unwrap_err()
                .contains("should be object")
        );
    }

    #[test]
    fn schemas_with_unsupported_keywords_or_types_are_refused() {
        assert!(check_schema(&ticket()).is_ok());
        assert!(
            check_schema(&json!({"type": "object", "oneOf": []}))
                .unwrap_err()
                .contains("`oneOf` is not supported")
        );
        assert!(check_schema(&json!({"type": "text"})).is_err());
        assert!(
            check_schema(&json!({"properties": {"a": {"type": "strng"}}}))
                .unwrap_err()
                .contains(".a")
        );
        assert!(check_schema(&json!({"required": "a"})).is_err());
        assert!(check_schema(&json!({"additionalProperties": {"type": "string"}})).is_err());
        assert!(check_schema(&json!({"maxLength": "5"})).is_err());
        assert!(check_schema(&json!({"enum": []})).is_err());
        assert!(validate(&json!(1.0), &json!({"type": "integer", "enum": [1]})).is_ok());
    }

    #[test]
    fn json_is_found_in_plain_or_fenced_answers() {
        assert_eq!(json_in(r#" {"a": 1} "#), Some(json!({"a": 1})));
        assert_eq!(
            json_in("Here:\n```json\n{\"a\": 2}\n```\nDone."),
            Some(json!({"a": 2}))
        );
        assert_eq!(json_in("no json here"), None);
    }

    #[test]
    fn the_payload_hash_ignores_key_order_and_sees_every_change() {
        let a = payload_hash(
            "webhook.post",
            &json!({"endpoint": "crm", "body": {"to": "a", "n": 1}}),
        );
        let b = payload_hash(
            "webhook.post",
            &json!({"body": {"n": 1, "to": "a"}, "endpoint": "crm"}),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            payload_hash(
                "webhook.post",
                &json!({"endpoint": "crm", "body": {"to": "b", "n": 1}})
            )
        );
        assert_ne!(
            a,
            payload_hash(
                "http.get",
                &json!({"endpoint": "crm", "body": {"to": "a", "n": 1}})
            )
        );
    }

    #[test]
    fn memory_namespaces_are_exact_or_prefixes() {
        let mut a = AgentDef {
            name: "a".into(),
            role: "A".into(),
            model: "default".into(),
            instructions: String::new(),
            tools: vec![],
            max_turns: 1,
            max_output_tokens: 1,
            timeout: Duration::seconds(1),
            token_budget: None,
            output_schema: None,
            memory: vec![],
        };
        assert!(a.may_use_memory("anything"));
        a.memory = vec!["company".into(), "leads/*".into()];
        assert!(a.may_use_memory("company"));
        assert!(a.may_use_memory("leads/acme"));
        assert!(!a.may_use_memory("companies"));
        assert!(!a.may_use_memory("secrets"));
    }

    #[test]
    fn turns_round_trip_as_tagged_json() {
        let t = Turn::Assistant {
            text: String::new(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "memory.read".into(),
                arguments: json!({"namespace": "company", "key": "acme.com"}),
            }],
            tokens_in: 10,
            tokens_out: 5,
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["role"], "assistant");
        assert_eq!(serde_json::from_value::<Turn>(v).unwrap(), t);
        assert_eq!(t.tokens(), 15);
    }
}
