//! Sandboxed templates (minijinja): no file system, no network, bounded work. Inputs and step
//! outputs reach templates only through the context the engine builds.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// Work a single template may do before it is stopped; generous for text, fatal for loops
/// written to burn the CPU.
const FUEL: u64 = 50_000;
/// Longest text a template may produce.
const MAX_OUTPUT: usize = 64 * 1024;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A typo in a variable name must fail the step, not silently render as empty.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(32);
        // A template is named by its own text, so each one is parsed once and kept: every
        // run renders the same few texts from its workflow. Nothing is read from anywhere.
        env.set_loader(|source| Ok(Some(source.to_owned())));
        env
    })
}

/// Renders `source` against `ctx`.
pub fn render(source: &str, ctx: &Value) -> Result<String, String> {
    let out = env()
        .get_template(source)
        .and_then(|t| t.render(ctx))
        .map_err(|e| describe(&e))?;
    if out.len() > MAX_OUTPUT {
        return Err(format!("template output is longer than {MAX_OUTPUT} bytes"));
    }
    Ok(out)
}

/// Renders every string inside a JSON value, leaving other values as they are.
pub fn render_value(value: &Value, ctx: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) if s.contains("{{") || s.contains("{%") => Value::String(render(s, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The variables a template reads, as dotted paths (`input.company`, `steps.fetch.output`).
/// Fails with the syntax error when the template does not parse.
pub fn variables(source: &str) -> Result<BTreeSet<String>, String> {
    let tmpl = env().template_from_str(source).map_err(|e| describe(&e))?;
    Ok(tmpl.undeclared_variables(true).into_iter().collect())
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_inputs_and_step_outputs() {
        let ctx = json!({"input": {"company": "acme.com"}, "steps": {"fetch": {"output": {"status": 200}}}});
        let out = render(
            "{{ input.company }} answered {{ steps.fetch.output.status }}",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "acme.com answered 200");
    }

    #[test]
    fn a_missing_variable_is_an_error_not_an_empty_string() {
        let err = render("hello {{ input.nobody }}", &json!({"input": {}})).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let err = render(
            "{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}",
            &json!({}),
        )
        .unwrap_err();
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn variables_lists_dotted_paths_read_by_a_template() {
        let vars = variables(
            "{{ input.a }} {{ steps.s1.output.x }}{% for i in items %}{{ i }}{% endfor %}",
        )
        .unwrap();
        assert!(vars.contains("input.a"));
        assert!(vars.iter().any(|v| v.starts_with("steps.s1")));
        assert!(vars.contains("items"));
        assert!(!vars.contains("i"));
    }

    #[test]
    fn nested_values_render_every_string() {
        let out = render_value(
            &json!({"a": ["{{ input.x }}", 3]}),
            &json!({"input": {"x": "y"}}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": ["y", 3]}));
    }
}
