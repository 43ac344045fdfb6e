//! docs/API.md cannot drift from the code: every route of the router, every field of the
//! cluster file and every subcommand and flag of the command line is documented there, every
//! documented endpoint is served, and every documented default is the parser's.
//!
//! axum cannot list a router's routes, so the routes are read from the source of `src/api/`
//! (every `.route("PATH", METHOD(...)...)` outside `#[cfg(test)]`); the fields come from the
//! config parser's own lists and defaults, the command line from clap's definition.
//! Each failure names what is missing, where it is defined and where in docs/API.md it goes;
//! all failures are reported at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn api_doc() -> String {
    std::fs::read_to_string(repo().join("docs/API.md")).expect("docs/API.md is readable")
}

/// The lines between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn marked_section<'a>(doc: &'a str, name: &str) -> &'a str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/API.md lacks the marker {begin}"))
        + begin.len();
    let stop = doc[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("docs/API.md lacks the marker {end} after {begin}"))
        + start;
    &doc[start..stop]
}

/// The markdown section from `## TITLE` to the next `## `.
fn chapter<'a>(doc: &'a str, title: &str) -> &'a str {
    let heading = format!("\n## {title}\n");
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/API.md lacks the section `## {title}`"))
        + heading.len();
    let stop = doc[start..].find("\n## ").map_or(doc.len(), |i| i + start);
    &doc[start..stop]
}

/// The cells of each table row, backticks stripped, header and separator rows skipped.
fn table_rows(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.first().is_some_and(|c| c.starts_with('`')))
        .collect()
}

fn unquote(cell: &str) -> &str {
    cell.trim().trim_matches('`')
}

/// `(METHOD, path)` of every route in the non-test code of the `.rs` files under `dir`.
fn routes_in_source(dir: &Path) -> BTreeSet<(String, String, String)> {
    let mut routes = BTreeSet::new();
    let mut files = vec![dir.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("src/api is listable") {
                files.push(entry.expect("a directory entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file is readable");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let file = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .display()
            .to_string();
        for (method, route) in routes_in(code) {
            routes.insert((method, route, file.clone()));
        }
    }
    routes
}

/// Parses `.route("PATH", get(a).post(b))` calls: the path literal, then every method
/// router (`get(`, `post(`, `put(`, `delete(`, `patch(`) up to the call's closing paren.
fn routes_in(code: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        if !rest.trim_start().starts_with('"') {
            // A path held in a constant cannot be read from the source: say so rather
            // than pair the next literal with the wrong methods.
            let snippet: String = rest.lines().next().unwrap_or("").chars().take(60).collect();
            found.push(("UNREADABLE".to_string(), snippet.trim().to_string()));
            continue;
        }
        let Some(open) = rest.find('"') else { break };
        let Some(close) = rest[open + 1..].find('"') else {
            break;
        };
        let path = rest[open + 1..open + 1 + close].replace("{*", "{");
        // The arguments end at the paren that closes `.route(`.
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args = &rest[open + close + 2..end];
        for method in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(i) = args[from..].find(&call) {
                let before = args[..from + i].chars().next_back();
                if before.is_none_or(|b| !b.is_alphanumeric() && b != '_') {
                    found.push((method.to_uppercase(), path.clone()));
                    break;
                }
                from += i + call.len();
            }
        }
        rest = &rest[end..];
    }
    found
}

fn documented_endpoints(section: &str) -> BTreeSet<(String, String)> {
    table_rows(section)
        .into_iter()
        .filter(|cells| cells.len() >= 2)
        .map(|cells| {
            (
                unquote(&cells[0]).to_string(),
                unquote(&cells[1]).to_string(),
            )
        })
        .collect()
}

fn assert_no_failures(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "docs/API.md has drifted from {what}:\n  - {}",
        failures.join("\n  - ")
    );
}

#[test]
fn every_route_is_documented_and_every_documented_endpoint_is_served() {
    let doc = api_doc();
    let index = documented_endpoints(marked_section(&doc, "endpoints"));
    let planned = documented_endpoints(marked_section(&doc, "planned"));
    let routes = routes_in_source(&repo().join("src/api"));
    assert!(
        routes
            .iter()
            .any(|(m, p, _)| m == "GET" && p == "/v1/status"),
        "the route parser found no `GET /v1/status` in src/api: it no longer understands \
         the router's source; found {routes:?}"
    );
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let mut failures = Vec::new();
    for (method, path, file) in &routes {
        if method == "UNREADABLE" {
            failures.push(format!(
                "a route in {file} does not name its path as a string literal (`.route({path}…`): \
                 write `.route(\"/path\", ...)` so that tests/api_doc.rs can check it is documented"
            ));
            continue;
        }
        let key = (method.clone(), path.clone());
        if !index.contains(&key) {
            failures.push(format!(
                "`{method} {path}` (routed in {file}) is not in the endpoint index: add a row \
                 `| `{method}` | `{path}` | ... |` between <!-- endpoints:begin --> and \
                 <!-- endpoints:end -->{}",
                if planned.contains(&key) {
                    ", and remove it from the 'Not yet served' table"
                } else {
                    ""
                }
            ));
        }
    }
    for (method, path) in &index {
        if !served.contains(&(method.clone(), path.clone())) {
            failures.push(format!(
                "`{method} {path}` is in the endpoint index but no route in src/api serves it: \
                 remove the row, or move it to the 'Not yet served' table"
            ));
        }
    }
    for (method, path) in &planned {
        if index.contains(&(method.clone(), path.clone())) {
            failures.push(format!(
                "`{method} {path}` is both in the endpoint index and under 'Not yet served'"
            ));
        }
    }
    assert_no_failures("the router (src/api)", failures);
}

const MINIMAL_CONFIG: &str = r#"{"cluster_id": "c",
    "nodes": {"1": {"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"}}}"#;

#[test]
fn every_config_field_is_documented_with_the_parsers_default() {
    let doc = api_doc();
    let rows = table_rows(marked_section(&doc, "config-fields"));
    let node_rows = table_rows(marked_section(&doc, "node-fields"));
    let defaults: Value = {
        let config = raftlog::config::ClusterConfig::parse(MINIMAL_CONFIG, Path::new("min.json"))
            .expect("the minimal cluster file parses");
        serde_json::from_str(&config.to_json()).expect("to_json gives JSON")
    };
    let known = raftlog::config::top_level_field_names();
    let mut failures = Vec::new();
    let documented: Vec<&str> = rows.iter().map(|cells| unquote(&cells[0])).collect();
    for field in known {
        if !documented.contains(field) {
            failures.push(format!(
                "config field `{field}` (src/config.rs, TOP_LEVEL_FIELDS) has no row between \
                 <!-- config-fields:begin --> and <!-- config-fields:end -->: add \
                 `| `{field}` | default | accepted values | meaning |`"
            ));
        }
    }
    for cells in &rows {
        let field = unquote(&cells[0]);
        if !known.contains(&field) {
            failures.push(format!(
                "config field `{field}` is documented but the parser refuses it (not in \
                 TOP_LEVEL_FIELDS of src/config.rs): remove the row or teach the parser"
            ));
            continue;
        }
        let Some(default_cell) = cells.get(1) else {
            failures.push(format!(
                "config field `{field}`: the row has no default column"
            ));
            continue;
        };
        let applied = defaults.get(field).cloned().unwrap_or(Value::Null);
        if let Some(literal) = default_cell.strip_prefix('`') {
            // A backticked default is the JSON value the parser fills in.
            let literal = literal.split('`').next().unwrap_or("");
            match serde_json::from_str::<Value>(literal) {
                Ok(value) if value == applied => {}
                Ok(value) => failures.push(format!(
                    "config field `{field}`: docs/API.md says the default is {value}, the parser \
                     applies {applied} (ClusterConfig::to_json of a file without it)"
                )),
                Err(e) => failures.push(format!(
                    "config field `{field}`: the default `{literal}` is not JSON ({e})"
                )),
            }
        } else if applied != Value::Null && !["cluster_id", "nodes"].contains(&field) {
            failures.push(format!(
                "config field `{field}`: the parser applies the default {applied}; write it \
                 as `{applied}` in the default column"
            ));
        }
    }
    let node_documented: Vec<&str> = node_rows.iter().map(|cells| unquote(&cells[0])).collect();
    for field in raftlog::config::node_field_names() {
        if !node_documented.contains(field) {
            failures.push(format!(
                "field `{field}` of a `nodes` entry (src/config.rs, NODE_FIELDS) has no row \
                 between <!-- node-fields:begin --> and <!-- node-fields:end -->"
            ));
        }
    }
    for field in &node_documented {
        if !raftlog::config::node_field_names().contains(field) {
            failures.push(format!(
                "field `{field}` of a `nodes` entry is documented but the parser refuses it"
            ));
        }
    }
    assert_no_failures("the config parser (src/config.rs)", failures);
}

/// Every subcommand path, e.g. `["members", "add"]`, with its long flags.
fn subcommands(
    command: &clap::Command,
    path: &mut Vec<String>,
    out: &mut Vec<(String, Vec<String>)>,
) {
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        path.push(sub.get_name().to_string());
        let flags = sub
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["help", "version"].contains(l))
            .map(|l| format!("--{l}"))
            .collect();
        out.push((path.join(" "), flags));
        subcommands(sub, path, out);
        path.pop();
    }
}

#[test]
fn every_subcommand_and_flag_is_documented() {
    let doc = api_doc();
    let section = chapter(&doc, "Command line");
    let mut all = Vec::new();
    subcommands(&raftlog::cli::Cli::command(), &mut Vec::new(), &mut all);
    assert!(
        all.iter().any(|(name, _)| name == "serve"),
        "clap's definition has no `serve`: {all:?}"
    );
    let mut failures = Vec::new();
    for (name, flags) in &all {
        let usage = format!("raftlog {name}");
        if !section.contains(&format!("`{usage}")) && !section.contains(&format!("`{usage} ")) {
            failures.push(format!(
                "subcommand `{usage}` (src/cli/mod.rs) is not in docs/API.md's 'Command line' \
                 section: document it as `{usage} ...`"
            ));
        }
        for flag in flags {
            let spelled = [" ", "`", "]", "|", ","]
                .iter()
                .any(|after| section.contains(&format!("{flag}{after}")));
            if !spelled {
                failures.push(format!(
                    "flag `{flag}` of `{usage}` (src/cli/) is not in docs/API.md's 'Command \
                     line' section"
                ));
            }
        }
    }
    assert_no_failures("the command line (src/cli/)", failures);
}

#[test]
fn route_parser_reads_chained_and_qualified_method_routers() {
    let code = r#"
        .route("/v1/kv/{*key}", put(h::put).get(h::get).delete(h::delete))
        .route("/v1/members/{id}", axum::routing::delete(members::remove))
        .route("/v1/x", post(budget_layer(get_thing)))
        .route(WATCH_PATH, get(watch))
    "#;
    let routes = routes_in(code);
    assert_eq!(
        routes,
        vec![
            ("GET".to_string(), "/v1/kv/{key}".to_string()),
            ("PUT".to_string(), "/v1/kv/{key}".to_string()),
            ("DELETE".to_string(), "/v1/kv/{key}".to_string()),
            ("DELETE".to_string(), "/v1/members/{id}".to_string()),
            ("POST".to_string(), "/v1/x".to_string()),
            (
                "UNREADABLE".to_string(),
                "WATCH_PATH, get(watch))".to_string()
            ),
        ]
    );
}

/// Every error code the API answers with: the `code: "..."` of each `ApiError` built in
/// `src/api/` (outside `#[cfg(test)]`) and the codes `error::code_for_status` gives the
/// errors axum answers itself.
fn error_codes_in_source(dir: &Path) -> BTreeSet<(String, String)> {
    let mut codes = BTreeSet::new();
    let mut files = vec![dir.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("src/api is readable") {
                files.push(entry.expect("a directory entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("a source file is readable");
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let file = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .display()
            .to_string();
        for (at, _) in code.match_indices("code: \"") {
            let rest = &code[at + "code: \"".len()..];
            if let Some(end) = rest.find('"') {
                codes.insert((rest[..end].to_string(), file.clone()));
            }
        }
        if let Some(at) = code.find("fn code_for_status(") {
            let body = &code[at..];
            let body = &body[..body.find("\n}").unwrap_or(body.len())];
            for (at, _) in body.match_indices("=> \"") {
                let rest = &body[at + "=> \"".len()..];
                if let Some(end) = rest.find('"') {
                    codes.insert((rest[..end].to_string(), file.clone()));
                }
            }
        }
    }
    codes
}

#[test]
fn every_error_code_is_documented() {
    let doc = api_doc();
    // Rows `| STATUS | `code` | meaning | retry |` of the Errors table.
    let documented: BTreeSet<String> = chapter(&doc, "Errors")
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").collect();
            let status = cells.first()?.trim();
            let code = unquote(cells.get(1)?).to_string();
            (status.len() == 3 && status.chars().all(|c| c.is_ascii_digit())).then_some(code)
        })
        .collect();
    let codes = error_codes_in_source(&repo().join("src/api"));
    assert!(
        codes.iter().any(|(code, _)| code == "no_leader"),
        "the error-code scan found no `no_leader` in src/api: it no longer understands how \
         errors are built; found {codes:?}"
    );
    let failures = codes
        .iter()
        .filter(|(code, _)| !documented.contains(code))
        .map(|(code, file)| {
            format!(
                "the error code `{code}` (answered in {file}) is not in the table of \
                 '## Errors': add a row `| STATUS | `{code}` | meaning | safe to retry? |`"
            )
        })
        .collect();
    assert_no_failures("the error codes of src/api", failures);
}
