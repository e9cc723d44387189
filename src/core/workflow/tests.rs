//! `baton check`: every kind of error, with the line it points at.

use super::*;
use crate::core::tools::ToolCatalog;
use std::path::Path;

fn diagnostics(text: &str) -> Vec<(usize, String)> {
    let (_, diags) = parse_workflow(Path::new("w.toml"), text, &ToolCatalog::builtin());
    diags
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line, d.message))
        .collect()
}

fn assert_error(text: &str, line: usize, needle: &str) {
    let d = diagnostics(text);
    assert!(
        d.iter().any(|(l, m)| *l == line && m.contains(needle)),
        "wanted line {line} `{needle}`, got {d:?}"
    );
}

const HEAD: &str = "name = \"w\"\n[[trigger]]\nkind = \"slash\"\ncommand = \"w\"\n";

#[test]
fn a_valid_workflow_has_no_errors() {
    let text =
        format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"{{{{ input.text }}}}\"\n");
    assert!(diagnostics(&text).is_empty(), "{:?}", diagnostics(&text));
}

#[test]
fn an_unknown_step_in_needs_points_at_the_need() {
    let text = format!(
        "{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\nneeds = [\"ghost\"]\n"
    );
    assert_error(&text, 9, "needs unknown step `ghost`");
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let text = format!(
        "{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\nneeds = [\"b\"]\n[[step]]\nid = \"b\"\nkind = \"notify\"\ntext = \"x\"\nneeds = [\"a\"]\n"
    );
    assert_error(&text, 6, "steps form a cycle: a -> b -> a");
}

#[test]
fn a_bad_regex_points_at_the_pattern() {
    let text = "name = \"w\"\n[[trigger]]\nkind = \"message\"\npattern = '(unclosed'\n[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\n";
    assert_error(text, 4, "bad regex");
}

#[test]
fn a_bad_cron_or_time_zone_points_at_the_field() {
    let text = "name = \"w\"\n[[trigger]]\nkind = \"schedule\"\ncron = \"99 * * * *\"\ntimezone = \"Mars/Olympus\"\nchannel = \"general\"\n[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\n";
    assert_error(text, 4, "bad cron");
    assert_error(text, 5, "unknown time zone `Mars/Olympus`");
}

#[test]
fn templates_may_only_read_known_inputs_and_steps_they_need() {
    let text = format!(
        "{HEAD}args = [{{ name = \"who\" }}]\n[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"{{{{ input.whom }}}}\"\n[[step]]\nid = \"b\"\nkind = \"notify\"\ntext = \"{{{{ steps.a.output.text }}}} {{{{ steps.zz.output }}}} {{{{ secrets.key }}}}\"\n"
    );
    assert_error(&text, 9, "unknown input `whom`");
    assert_error(&text, 13, "step `b` reads step `a` but does not need it");
    assert_error(&text, 13, "unknown step `zz`");
    assert_error(&text, 13, "unknown variable `secrets`");
}

#[test]
fn a_template_that_does_not_parse_is_an_error() {
    let text = format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"{{{{ oops\"\n");
    assert_error(&text, 8, "template does not parse");
}

#[test]
fn an_unknown_tool_lists_the_known_ones() {
    let text = format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"tool\"\ntool = \"shell.exec\"\n");
    assert_error(
        &text,
        8,
        "unknown tool `shell.exec` (known: http.get, webhook.post)",
    );
}

#[test]
fn an_external_tool_needs_an_approval_before_it_unless_auto() {
    let step = "[[step]]\nid = \"a\"\nkind = \"tool\"\ntool = \"webhook.post\"\nwith = { endpoint = \"x\", body = {} }\n";
    assert_error(
        &format!("{HEAD}{step}"),
        5,
        "external tool `webhook.post` with no approval step before it",
    );
    let auto = format!("{HEAD}{step}[tools.\"webhook.post\"]\nauto = true\n");
    assert!(diagnostics(&auto).is_empty(), "{:?}", diagnostics(&auto));
}

#[test]
fn unknown_fields_and_kinds_are_errors_not_silently_ignored() {
    assert_error(
        &format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntxt = \"x\"\n"),
        8,
        "unknown field `txt`",
    );
    assert_error(
        &format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"teleport\"\n"),
        7,
        "unknown step kind `teleport`",
    );
    assert_error(
        &format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"agent\"\n"),
        7,
        "agent step `a` needs `agent`",
    );
}

const AGENT: &str = r#"
[agents.researcher]
role = "Researcher"
instructions = "You research {{ input.text }}."
tools = ["http.get", "memory.read", "memory.write"]
output_schema = { type = "object", required = ["summary"], properties = { summary = { type = "string" } } }
"#;

#[test]
fn an_agent_step_runs_a_declared_agent_with_its_limits_and_schema() {
    let text = format!(
        "{HEAD}{AGENT}[[step]]\nid = \"a\"\nkind = \"agent\"\nagent = \"researcher\"\nprompt = \"Look into {{{{ input.text }}}}\"\n"
    );
    let (wf, diags) = parse_workflow(Path::new("w.toml"), &text, &ToolCatalog::builtin());
    assert!(diags.is_empty(), "{diags:?}");
    let wf = wf.unwrap();
    let StepKind::Agent { agent, prompt, .. } = &wf.steps[0].kind else {
        panic!("an agent step")
    };
    assert_eq!(agent.role, "Researcher");
    assert_eq!(agent.model, "default");
    assert_eq!(agent.tools, ["http.get", "memory.read", "memory.write"]);
    assert_eq!(agent.max_turns, 8);
    assert!(agent.output_schema.is_some());
    assert_eq!(prompt, "Look into {{ input.text }}");
    assert_eq!(
        wf.steps[0].timeout,
        chrono::Duration::minutes(3),
        "the agent's timeout"
    );
}

#[test]
fn agents_with_unknown_or_external_tools_bad_schemas_or_unknown_names_are_errors() {
    let step = "[[step]]\nid = \"a\"\nkind = \"agent\"\nagent = \"researcher\"\nprompt = \"go\"\n";
    let with = |agent: &str| format!("{HEAD}{agent}{step}");
    assert_error(
        &with(&AGENT.replace("\"http.get\"", "\"shell.exec\"")),
        9,
        "agent `researcher`: unknown tool `shell.exec`",
    );
    assert_error(
        &with(&AGENT.replace("\"http.get\"", "\"webhook.post\"")),
        14,
        "may call webhook.post (external), so the step needs `approvers`",
    );
    let approved =
        with(&AGENT.replace("\"http.get\"", "\"webhook.post\"")) + "approvers = [\"ben\"]\n";
    assert!(
        diagnostics(&approved).is_empty(),
        "{:?}",
        diagnostics(&approved)
    );
    assert_error(
        &with(&AGENT.replace("required = [\"summary\"]", "oneOf = []")),
        10,
        "keyword `oneOf` is not supported",
    );
    assert_error(
        &format!("{HEAD}{step}"),
        8,
        "unknown agent `researcher` (known: none)",
    );
    assert_error(
        &format!("{HEAD}[[step]]\nid = \"s\"\nkind = \"tool\"\ntool = \"memory.write\"\n"),
        8,
        "unknown tool `memory.write` (known: http.get, webhook.post)",
    );
}

#[test]
fn shared_agents_come_from_the_agents_folder_and_travel_with_the_workflow() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("agents")).unwrap();
    std::fs::write(
        dir.path().join("agents/writer.toml"),
        "role = \"Writer\"\nmodel = \"fast\"\ninstructions = \"Write well.\"\n[output_schema]\ntype = \"object\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agents/broken.toml"),
        "role = \"X\"\ninstructions = \"x\"\ntools = [\"nope\"]\n",
    )
    .unwrap();
    let wf = format!(
        "{HEAD}[[step]]\nid = \"w\"\nkind = \"agent\"\nagent = \"writer\"\nprompt = \"Draft\"\n"
    );
    std::fs::write(dir.path().join("w.toml"), &wf).unwrap();
    let (set, diags) = load_dir(dir.path(), &ToolCatalog::builtin()).unwrap();
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0]
            .to_string()
            .contains("broken.toml:3: error: agent `broken`: unknown tool `nope`"),
        "{}",
        diags[0]
    );
    let w = set.iter().next().unwrap();
    assert!(w.source.contains("[agents.writer]"), "{}", w.source);
    // The stored text parses on its own, with no agents folder: a run keeps its agents.
    let (again, diags) = parse_workflow(Path::new("w.toml"), &w.source, &ToolCatalog::builtin());
    assert!(diags.is_empty(), "{diags:?}");
    let StepKind::Agent { agent, .. } = &again.unwrap().steps[0].kind else {
        panic!()
    };
    assert_eq!(agent.model, "fast");
    let configured: std::collections::BTreeSet<String> = ["default".to_owned()].into();
    let models = check_models(&set, &configured);
    assert!(
        models[0]
            .to_string()
            .contains("model `fast`, which BATON_MODELS does not name"),
        "{}",
        models[0]
    );
    assert_eq!(models[0].severity, Severity::Error);
    let none = check_models(&set, &Default::default());
    assert_eq!(none[0].severity, Severity::Warning);
}

#[test]
fn duplicate_commands_across_files_are_reported_with_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\n";
    std::fs::write(
        dir.path().join("a.toml"),
        format!("name = \"one\"\n[[trigger]]\nkind = \"slash\"\ncommand = \"go\"\n{body}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        format!("name = \"two\"\n\n[[trigger]]\nkind = \"slash\"\ncommand = \"go\"\n{body}"),
    )
    .unwrap();
    let (set, diags) = load_dir(dir.path(), &ToolCatalog::builtin()).unwrap();
    let d = diags
        .iter()
        .find(|d| d.message.contains("command `/go` is also declared"))
        .expect("duplicate reported");
    assert!(d.file.ends_with("b.toml") && d.line == 5, "{d}");
    assert!(d.message.contains("a.toml:4"), "{d}");
    assert_eq!(set.len(), 1);
}

#[test]
fn the_shipped_examples_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("commands");
    let (set, diags) = load_dir(&dir, &ToolCatalog::builtin()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    for name in ["demo", "incident", "daily-digest"] {
        assert!(set.get(name).is_some(), "{name} missing");
    }
}

#[test]
fn schedule_slots_follow_daylight_saving_time() {
    let text = "name = \"w\"\n[[trigger]]\nkind = \"schedule\"\ncron = \"0 9 * * *\"\ntimezone = \"Europe/Berlin\"\nchannel = \"general\"\n[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\n";
    let (wf, _) = parse_workflow(Path::new("w.toml"), text, &ToolCatalog::builtin());
    let Trigger::Schedule(s) = &wf.unwrap().triggers[0] else {
        panic!()
    };
    let utc = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    // 09:00 Berlin is 08:00 UTC in winter and 07:00 UTC in summer (the switch was 2026-03-29).
    assert_eq!(
        s.latest_slot(utc("2026-03-27T09:00:00Z"), utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-28T08:00:00Z"))
    );
    assert_eq!(
        s.latest_slot(utc("2026-03-28T09:00:00Z"), utc("2026-03-29T12:00:00Z")),
        Some(utc("2026-03-29T07:00:00Z"))
    );
    assert_eq!(
        s.latest_slot(utc("2026-03-29T07:00:00Z"), utc("2026-03-29T12:00:00Z")),
        None,
        "a slot fires once"
    );
}

/// The TOML blocks of a document.
fn toml_blocks(doc: &str) -> Vec<&str> {
    doc.split("```toml\n")
        .skip(1)
        .map(|rest| &rest[..rest.find("```").unwrap()])
        .collect()
}

#[test]
fn the_documented_examples_pass_check() {
    for file in ["docs/workflows.md", "README.md"] {
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let blocks = toml_blocks(&doc);
        // The first whole workflow (triggers and steps) is the one to copy.
        let example = blocks
            .iter()
            .find(|b| b.contains("[[trigger]]") && b.contains("[[step]]"))
            .expect("the doc has a workflow example");
        let d = diagnostics(example);
        assert!(d.is_empty(), "{file}: {d:?}");
        // MCP server files, introduced by their path.
        for block in blocks.iter().filter(|b| b.starts_with("# commands/mcp/")) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("server.toml"), block).unwrap();
            let (servers, d) =
                super::load_mcp_servers(dir.path(), &|_: &str| Some("set".into())).unwrap();
            assert!(d.is_empty() && servers.len() == 1, "{file}: {block}\n{d:?}");
        }
        // Approval policy files, likewise.
        for block in blocks
            .iter()
            .filter(|b| b.starts_with("# commands/policies/"))
        {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("policies")).unwrap();
            std::fs::write(dir.path().join("policies/p.toml"), block).unwrap();
            let (_, d) = load_dir(dir.path(), &ToolCatalog::builtin()).unwrap();
            assert!(d.is_empty(), "{file}: {block}\n{d:?}");
        }
    }
}

/// HEAD plus a notify step `a` and an approval step `gate` after it, with `extra` lines.
fn gate(extra: &str) -> String {
    format!(
        "{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\n[[step]]\nid = \"gate\"\nkind = \"approval\"\nneeds = [\"a\"]\napprovers = [\"ben\", \"cy\"]\ntimeout = \"4h\"\n{extra}"
    )
}

#[test]
fn a_governed_approval_with_quorum_condition_and_ladder_has_no_errors() {
    let text = gate(
        "quorum = 2\nrejections = 2\nwhen = \"steps.a.output.text == 'x'\"\nremind_after = \"1h\"\nescalate_after = \"2h\"\nescalate_to = { channel = \"leads\", approvers = [\"dee\"] }\non_timeout = \"approve\"\n",
    );
    assert!(diagnostics(&text).is_empty(), "{:?}", diagnostics(&text));
}

#[test]
fn quorum_and_ladder_mistakes_point_at_their_line() {
    assert_error(
        &gate("quorum = 3\n"),
        15,
        "`quorum = 3` needs more approvers than the 2 listed",
    );
    assert_error(&gate("quorum = 0\n"), 15, "`quorum` must be at least 1");
    assert_error(
        &gate("escalate_after = \"2h\"\n"),
        15,
        "`escalate_after` needs `escalate_to`",
    );
    assert_error(
        &gate(
            "remind_after = \"3h\"\nescalate_after = \"2h\"\nescalate_to = { channel = \"x\" }\n",
        ),
        16,
        "`escalate_after` must come after `remind_after`",
    );
    assert_error(
        &gate("remind_after = \"5h\"\n"),
        15,
        "must come before the approval expires",
    );
    assert_error(
        &gate("on_timeout = \"shrug\"\n"),
        15,
        "use \"reject\" or \"approve\"",
    );
    assert_error(
        &gate("escalate_after = \"2h\"\nescalate_to = {}\n"),
        16,
        "needs a `channel`, `approvers`, or both",
    );
}

#[test]
fn an_approval_condition_is_checked_like_a_template() {
    assert_error(
        &gate("when = \"steps.ghost.output > 1\"\n"),
        15,
        "unknown step `ghost`",
    );
    assert_error(&gate("when = \"amount >\"\n"), 15, "does not parse");
    let text = format!("{HEAD}[[step]]\nid = \"a\"\nkind = \"notify\"\ntext = \"x\"\nquorum = 2\n");
    assert_error(&text, 7, "`quorum` does not apply to a notify step");
}

#[test]
fn a_named_policy_fills_in_what_a_step_does_not_say_and_travels_with_the_workflow() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/payments.toml"),
        "approvers = [\"group:finance\"]\nquorum = 2\nremind_after = \"1h\"\nescalate_after = \"2h\"\nescalate_to = { channel = \"finance-leads\" }\ntimeout = \"8h\"\nreject_reason = true\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/broken.toml"),
        "approvers = [\"ben\"]\nquorum = 0\n",
    )
    .unwrap();
    let wf = format!(
        "{HEAD}[[step]]\nid = \"pay\"\nkind = \"approval\"\npolicy = \"payments\"\nquorum = 3\n[[step]]\nid = \"other\"\nkind = \"approval\"\npolicy = \"nope\"\n[[step]]\nid = \"note\"\nkind = \"notify\"\ntext = \"x\"\npolicy = \"payments\"\n"
    );
    std::fs::write(dir.path().join("w.toml"), &wf).unwrap();
    let (_, diags) = load_dir(dir.path(), &ToolCatalog::builtin()).unwrap();
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|d| d
                .contains("broken.toml:2: error: policy `broken`: `quorum` must be at least 1")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|d| d.contains("w.toml:13: error: unknown policy `nope` (known: payments")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|d| d.contains("w.toml:18: error: `policy` does not apply to a notify step")),
        "{text:#?}"
    );

    // Without the mistakes: the step's own quorum wins, the rest comes from the policy, and the
    // stored text carries the policy.
    let wf = format!(
        "{HEAD}[[step]]\nid = \"pay\"\nkind = \"approval\"\npolicy = \"payments\"\nquorum = 3\n"
    );
    std::fs::write(dir.path().join("w.toml"), &wf).unwrap();
    std::fs::remove_file(dir.path().join("policies/broken.toml")).unwrap();
    let (set, diags) = load_dir(dir.path(), &ToolCatalog::builtin()).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let w = set.get("w").unwrap();
    let StepKind::Approval(spec) = &w.step("pay").unwrap().kind else {
        panic!()
    };
    assert_eq!(spec.approvers, ["group:finance"]);
    assert_eq!(spec.quorum, 3);
    assert!(spec.reject_reason);
    assert_eq!(spec.timeout, Duration::hours(8));
    assert_eq!(spec.escalate_to.channel.as_deref(), Some("finance-leads"));
    assert!(w.source.contains("[policies.payments]"), "{}", w.source);
    // The stored text alone (as a run keeps it) parses to the same policy.
    let (again, d) = parse_workflow(Path::new("w.toml"), &w.source, &ToolCatalog::builtin());
    assert!(d.is_empty(), "{d:?}");
    let again = again.unwrap();
    let StepKind::Approval(spec) = &again.step("pay").unwrap().kind else {
        panic!()
    };
    assert_eq!(spec.quorum, 3);
}

#[test]
fn an_editable_approval_needs_a_payload_and_its_template_is_checked() {
    assert_error(
        &gate("editable = true\n"),
        15,
        "`editable` needs a `payload` to edit",
    );
    assert_error(
        &gate("payload = \"{{ steps.ghost.output }}\"\n"),
        15,
        "unknown step `ghost`",
    );
    let ok = gate("payload = \"{{ steps.a.output.text }}\"\neditable = true\n");
    assert!(diagnostics(&ok).is_empty(), "{:?}", diagnostics(&ok));
}
