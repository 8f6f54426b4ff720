//! Every statement the repositories run passes the isolation guard: this test reads the
//! data layer's source, extracts the SQL of each `guard::query`/`guard::query_scalar`
//! call, and checks it. A new repository statement that forgets its tenant predicate
//! fails here, before it ever runs.

use std::path::Path;

/// The SQL string literal that starts at `from` (the first `"` after it), with Rust's
/// line continuations joined and `{NAME}` format placeholders replaced by a column list.
fn literal_after(source: &str, from: usize) -> Option<String> {
    let start = from + source[from..].find('"')? + 1;
    let mut out = String::new();
    let mut chars = source[start..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => {
                if chars.peek() == Some(&'\n') {
                    while chars.peek().is_some_and(|c| c.is_whitespace()) {
                        chars.next();
                    }
                } else {
                    chars.next();
                }
            }
            other => out.push(other),
        }
    }
    let mut sql = String::new();
    let mut rest = out.as_str();
    while let Some(open) = rest.find('{') {
        sql.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        sql.push_str("id, name");
        // `SELECT {SUMMARY} WHERE …`: the constant holds its own FROM clause.
        if &rest[open..=close] == "{SUMMARY}" {
            sql.push_str(" FROM conversations");
        }
        rest = &rest[close + 1..];
    }
    sql.push_str(rest);
    Some(sql)
}

#[test]
fn every_repository_statement_passes_the_guard() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/db") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "guard.rs" {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("source");
        for call in ["guard::query(", "guard::query_scalar("] {
            let mut at = 0;
            while let Some(found) = source[at..].find(call) {
                let pos = at + found;
                let sql = literal_after(&source, pos).expect("a SQL literal");
                if let Err(e) = shared::db::guard::check(&sql) {
                    panic!("{name}: {e}");
                }
                checked += 1;
                at = pos + call.len();
            }
        }
        assert!(
            !source.contains("sqlx::query"),
            "{name} runs SQL without the guard"
        );
    }
    assert!(
        checked >= 40,
        "only {checked} statements found: is the scan broken?"
    );
}

/// The write procedures (`migrations/`) hold the same guard: each takes the tenant id
/// first, as `p_client_id`, and every statement of its body that touches a tenant table
/// is tied to it, by the rules the data layer's own statements pass.
#[test]
fn every_procedure_statement_passes_the_guard() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let (mut procedures, mut checked) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("migrations") {
        let path = entry.expect("entry").path();
        let source = std::fs::read_to_string(&path).expect("migration");
        // Comments out, so a statement is only what the server runs.
        let sql: String = source
            .lines()
            .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
            .collect::<Vec<_>>()
            .join("\n");
        for definition in sql.split("CREATE PROCEDURE").skip(1) {
            procedures += 1;
            let (name, rest) = definition.split_once('(').expect("a parameter list");
            let name = name.trim();
            let first_parameter = rest.split_whitespace().nth(1);
            assert_eq!(
                first_parameter,
                Some("p_client_id"),
                "{name}: the tenant id must come first"
            );
            for statement in rest.split(';') {
                let lower = statement.to_ascii_lowercase();
                let start = ["select ", "update ", "insert ", "delete "]
                    .iter()
                    .filter_map(|verb| lower.find(verb))
                    .min();
                let Some(start) = start else { continue };
                let statement = statement[start..].replace("p_client_id", "?");
                if let Err(e) = shared::db::guard::check(&statement) {
                    panic!("{name}: {e}");
                }
                checked += 1;
            }
        }
    }
    assert!(procedures >= 2, "only {procedures} procedures found");
    assert!(
        checked >= 6,
        "only {checked} procedure statements found: is the scan broken?"
    );
}
