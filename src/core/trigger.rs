//! Pure trigger matching: an inbound slash command or message against the workflows, giving
//! the runs to start and their inputs, or a usage message.

use crate::core::ids::RunId;
use crate::core::workflow::{ArgType, SlashTrigger, Trigger, Workflow, WorkflowSet};
use serde_json::{Map, Value};
use std::sync::Arc;

/// What a slash command asks for.
#[derive(Debug)]
pub enum SlashMatch {
    /// Start this workflow with these inputs.
    Start {
        workflow: Arc<Workflow>,
        inputs: Map<String, Value>,
    },
    /// Baton's own `/baton …` commands.
    Baton(BatonCommand),
    /// The arguments did not fit; show this privately.
    Usage(String),
    /// No workflow declares this command.
    Unknown(String),
}

/// `/baton cancel 42`, `/baton help`.
#[derive(Debug, PartialEq, Eq)]
pub enum BatonCommand {
    Cancel(RunId),
    Help,
}

/// Matches `/command text`, or `/command` with arguments the platform already typed and named
/// (`options`), which are checked against the declared arguments just as text is.
pub fn match_slash(
    set: &WorkflowSet,
    command: &str,
    text: &str,
    options: Option<&Map<String, Value>>,
) -> SlashMatch {
    let command = command.trim_start_matches('/');
    if command == "baton" {
        let mut words = text.split_whitespace();
        return match (words.next(), words.next(), words.next()) {
            (Some("cancel"), Some(run), None) => match run.parse() {
                Ok(run) => SlashMatch::Baton(BatonCommand::Cancel(run)),
                Err(e) => SlashMatch::Usage(format!("{e} Usage: /baton cancel <run>")),
            },
            (None | Some("help"), None, None) => SlashMatch::Baton(BatonCommand::Help),
            (Some("cancel"), None, None) => SlashMatch::Usage(
                "Which run? Usage: /baton cancel <run>, with the run's number.".into(),
            ),
            _ => SlashMatch::Usage("Usage: /baton cancel <run> · /baton help".into()),
        };
    }
    match set.by_command(command) {
        None => SlashMatch::Unknown(format!("No workflow declares /{command}. Try /baton help.")),
        Some((wf, slash)) => {
            match options.map_or_else(|| parse_args(slash, text), |o| named_args(slash, o)) {
                Ok(args) => {
                    let mut inputs = wf.inputs.clone();
                    inputs.extend(args);
                    inputs.insert("text".into(), Value::String(text.trim().to_owned()));
                    SlashMatch::Start {
                        workflow: wf.clone(),
                        inputs,
                    }
                }
                Err(e) => SlashMatch::Usage(format!("{e}\nUsage: {}", slash.usage)),
            }
        }
    }
}

/// The help text listing every command.
pub fn help(set: &WorkflowSet) -> String {
    let mut lines = vec!["Commands:".to_owned()];
    for wf in set.iter() {
        if let Some(s) = wf.slash() {
            lines.push(format!("• {} — {}", s.usage, wf.description));
        }
    }
    lines.push("• /baton cancel <run> — cancel a run".into());
    lines.join("\n")
}

/// Splits and types the arguments. Positional; the last string argument takes the rest of the
/// line, so `/incident db latency high` gives `summary = "db latency high"`.
pub fn parse_args(spec: &SlashTrigger, text: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut rest = text.trim();
    for (i, arg) in spec.args.iter().enumerate() {
        let last = i + 1 == spec.args.len();
        let word = if rest.is_empty() {
            None
        } else if last && arg.ty == ArgType::String {
            let w = rest;
            rest = "";
            Some(w)
        } else {
            let (w, r) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            rest = r.trim_start();
            Some(w)
        };
        let value = match word {
            None if arg.required => return Err(format!("Missing argument `{}`.", arg.name)),
            None => match &arg.default {
                Some(d) => d.clone(),
                None => continue,
            },
            Some(w) => typed(&arg.name, &arg.ty, w)?,
        };
        out.insert(arg.name.clone(), value);
    }
    if !rest.is_empty() {
        return Err(format!("Unexpected extra text `{rest}`."));
    }
    Ok(out)
}

/// Checks arguments given by name: each must be declared and well typed, required ones present,
/// defaults filled in.
pub fn named_args(
    spec: &SlashTrigger,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    if let Some(unknown) = given
        .keys()
        .find(|k| !spec.args.iter().any(|a| &a.name == *k))
    {
        return Err(format!("Unknown argument `{unknown}`."));
    }
    let mut out = Map::new();
    for arg in &spec.args {
        let value = match given.get(&arg.name) {
            None | Some(Value::Null) if arg.required => {
                return Err(format!("Missing argument `{}`.", arg.name));
            }
            None | Some(Value::Null) => match &arg.default {
                Some(d) => d.clone(),
                None => continue,
            },
            Some(Value::String(s)) => typed(&arg.name, &arg.ty, s)?,
            Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                typed(&arg.name, &arg.ty, &v.to_string())?
            }
            Some(_) => return Err(format!("`{}` must be a single value.", arg.name)),
        };
        out.insert(arg.name.clone(), value);
    }
    Ok(out)
}

fn typed(name: &str, ty: &ArgType, word: &str) -> Result<Value, String> {
    match ty {
        ArgType::String => Ok(Value::String(word.to_owned())),
        ArgType::Int => word
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("`{name}` must be a whole number, not `{word}`.")),
        ArgType::Number => word
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(|| format!("`{name}` must be a number, not `{word}`.")),
        ArgType::Bool => match word.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "off" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{name}` must be yes or no, not `{word}`.")),
        },
        ArgType::Choice(choices) => choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(word))
            .map(|c| Value::String(c.clone()))
            .ok_or_else(|| {
                format!(
                    "`{name}` must be one of {}, not `{word}`.",
                    choices.join(", ")
                )
            }),
    }
}

/// A channel message as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub struct MessageFacts<'a> {
    pub channel: &'a str,
    pub text: &'a str,
    pub mentions_bot: bool,
    pub from_bot: bool,
    pub in_thread: bool,
}

/// Every workflow a message starts, with its inputs (named captures plus `text`).
pub fn match_message(
    set: &WorkflowSet,
    m: MessageFacts<'_>,
) -> Vec<(Arc<Workflow>, Map<String, Value>)> {
    let mut out = Vec::new();
    for wf in set.iter() {
        for t in &wf.triggers {
            let Trigger::Message(mt) = t else { continue };
            if (m.from_bot && !mt.include_bots) || (m.in_thread && !mt.in_threads) {
                continue;
            }
            if !mt.channels.is_empty() && !mt.channels.iter().any(|c| c == m.channel) {
                continue;
            }
            let mut inputs = wf.inputs.clone();
            let matched = match &mt.pattern {
                Some(re) => match re.captures(m.text) {
                    Some(caps) => {
                        for name in re.capture_names().flatten() {
                            if let Some(v) = caps.name(name) {
                                inputs.insert(
                                    name.to_owned(),
                                    Value::String(v.as_str().trim().to_owned()),
                                );
                            }
                        }
                        !mt.mention || m.mentions_bot
                    }
                    None => false,
                },
                None => mt.mention && m.mentions_bot,
            };
            if matched {
                inputs.insert("text".into(), Value::String(m.text.to_owned()));
                out.push((wf.clone(), inputs));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tools::ToolCatalog;
    use crate::core::workflow::parse_workflow;
    use serde_json::json;
    use std::path::Path;

    fn set(files: &[&str]) -> WorkflowSet {
        WorkflowSet::new(files.iter().map(|text| {
            let (wf, diags) = parse_workflow(Path::new("t.toml"), text, &ToolCatalog::builtin());
            wf.unwrap_or_else(|| panic!("{diags:?}"))
        }))
    }

    const LEAD: &str = r#"
name = "lead"
[[trigger]]
kind = "slash"
command = "lead"
args = [{ name = "company", required = true }]
[[trigger]]
kind = "message"
channels = ["leads"]
pattern = 'New lead: (?P<company>\S+)'
[[step]]
id = "hello"
kind = "notify"
text = "{{ input.company }}"
"#;

    const TYPED: &str = r#"
name = "typed"
[[trigger]]
kind = "slash"
command = "typed"
args = [{ name = "n", type = "int", required = true }, { name = "urgent", type = "bool", default = false }, { name = "level", type = "choice", choices = ["low", "high"] }, { name = "note" }]
[[trigger]]
kind = "message"
mention = true
[[step]]
id = "hello"
kind = "notify"
text = "hi"
"#;

    #[test]
    fn a_slash_command_starts_its_workflow_with_typed_inputs() {
        let s = set(&[LEAD, TYPED]);
        let SlashMatch::Start { workflow, inputs } =
            match_slash(&s, "/typed", "4 yes HIGH the rest of it", None)
        else {
            panic!()
        };
        assert_eq!(workflow.name, "typed");
        assert_eq!(inputs["n"], json!(4));
        assert_eq!(inputs["urgent"], json!(true));
        assert_eq!(inputs["level"], json!("high"));
        assert_eq!(inputs["note"], json!("the rest of it"));
    }

    #[test]
    fn defaults_fill_missing_optional_arguments() {
        let s = set(&[TYPED]);
        let SlashMatch::Start { inputs, .. } = match_slash(&s, "typed", "4", None) else {
            panic!()
        };
        assert_eq!(inputs["urgent"], json!(false));
        assert!(!inputs.contains_key("note"));
    }

    #[test]
    fn bad_arguments_answer_with_the_usage_text() {
        let s = set(&[TYPED, LEAD]);
        for (cmd, text, needle) in [
            ("typed", "four", "whole number"),
            ("typed", "", "Missing argument `n`"),
            ("typed", "1 maybe", "yes or no"),
            ("typed", "1 no medium", "one of low, high"),
            ("lead", "", "Usage: /lead <company>"),
        ] {
            let SlashMatch::Usage(msg) = match_slash(&s, cmd, text, None) else {
                panic!("{cmd} {text}")
            };
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn named_arguments_are_typed_and_checked_like_text() {
        let s = set(&[TYPED]);
        let given = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let SlashMatch::Start { inputs, .. } = match_slash(
            &s,
            "typed",
            "4 spaces in a middle value",
            Some(&given(
                json!({"n": 4, "note": "spaces in a middle value", "level": "HIGH"}),
            )),
        ) else {
            panic!()
        };
        assert_eq!(inputs["n"], json!(4));
        assert_eq!(inputs["note"], json!("spaces in a middle value"));
        assert_eq!(inputs["level"], json!("high"));
        assert_eq!(inputs["urgent"], json!(false));
        for (options, needle) in [
            (json!({}), "Missing argument `n`"),
            (json!({"n": 1.5}), "whole number"),
            (json!({"n": 1, "level": "medium"}), "one of low, high"),
            (json!({"n": 1, "extra": "x"}), "Unknown argument `extra`"),
            (json!({"n": [1]}), "single value"),
        ] {
            let SlashMatch::Usage(msg) = match_slash(&s, "typed", "", Some(&given(options))) else {
                panic!("{needle}")
            };
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn baton_cancel_parses_the_run_number() {
        let s = set(&[]);
        assert!(matches!(
            match_slash(&s, "baton", "cancel 42", None),
            SlashMatch::Baton(BatonCommand::Cancel(RunId(42)))
        ));
        assert!(matches!(
            match_slash(&s, "baton", "cancel x", None),
            SlashMatch::Usage(_)
        ));
        assert!(matches!(
            match_slash(&s, "nope", "", None),
            SlashMatch::Unknown(_)
        ));
    }

    #[test]
    fn a_message_in_the_right_channel_fires_with_named_captures() {
        let s = set(&[LEAD]);
        let facts = MessageFacts {
            channel: "leads",
            text: "New lead: acme.com",
            mentions_bot: false,
            from_bot: false,
            in_thread: false,
        };
        let hits = match_message(&s, facts);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].1["company"], json!("acme.com"));
        assert!(
            match_message(
                &s,
                MessageFacts {
                    channel: "general",
                    ..facts
                }
            )
            .is_empty()
        );
        assert!(
            match_message(
                &s,
                MessageFacts {
                    from_bot: true,
                    ..facts
                }
            )
            .is_empty()
        );
        assert!(
            match_message(
                &s,
                MessageFacts {
                    in_thread: true,
                    ..facts
                }
            )
            .is_empty()
        );
        assert!(
            match_message(
                &s,
                MessageFacts {
                    text: "old lead: x",
                    ..facts
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn a_mention_trigger_fires_only_when_the_bot_is_mentioned() {
        let s = set(&[TYPED]);
        let facts = MessageFacts {
            channel: "any",
            text: "@baton hi",
            mentions_bot: true,
            from_bot: false,
            in_thread: false,
        };
        assert_eq!(match_message(&s, facts).len(), 1);
        assert!(
            match_message(
                &s,
                MessageFacts {
                    mentions_bot: false,
                    ..facts
                }
            )
            .is_empty()
        );
    }
}
