//! Every statement the repositories run passes the isolation guard: this test reads the
//! data layer's source, extracts the SQL of each `guard::query`/`guard::query_scalar`
//! call, and checks it. A new repository statement that forgets its tenant predicate
//! fails here, before it ever runs.

use std::path::{Path, PathBuf};

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

/// The files below `dir` whose names end with `extension`, in name order.
fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files(&path, extension));
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn every_repository_statement_passes_the_guard() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db");
    let mut checked = 0;
    let mut refused = Vec::new();
    for path in files(&dir, "rs") {
        let name = path
            .strip_prefix(&dir)
            .unwrap_or(&path)
            .display()
            .to_string();
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
                    refused.push(format!("{name}: {e}"));
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
    assert!(refused.is_empty(), "{}", refused.join("\n"));
    assert!(
        checked >= 40,
        "only {checked} statements found: is the scan broken?"
    );
}

/// The current bodies of the write procedures, one file each.
fn procedure_files() -> Vec<PathBuf> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db/procedures"),
        "sql",
    )
}

/// SQL without its `--` comments: only what the server runs.
fn without_comments(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The write procedures hold the same guard: each takes the tenant id first, as
/// `p_client_id`, and every statement of its body that touches a tenant table (or calls
/// another procedure) is tied to it, by the rules the data layer's own statements pass.
#[test]
fn every_procedure_statement_passes_the_guard() {
    let (mut procedures, mut checked) = (0, 0);
    for path in procedure_files() {
        let sql = without_comments(&std::fs::read_to_string(&path).expect("procedure"));
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
                let start = ["select ", "update ", "insert ", "delete ", "call "]
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
    assert!(procedures >= 5, "only {procedures} procedures found");
    assert!(
        checked >= 12,
        "only {checked} procedure statements found: is the scan broken?"
    );
}

/// A procedure's `CREATE PROCEDURE name(` … `END;` text, whitespace-normalised.
fn definition_of(sql: &str, name: &str) -> Option<String> {
    let start = sql.find(&format!("CREATE PROCEDURE {name}("))?;
    let end = start + sql[start..].find("\nEND;")? + "\nEND;".len();
    Some(
        sql[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Each procedure's body lives once in the source tree (src/db/procedures/), and the
/// latest migration that defines it defines exactly that body: a change to a procedure
/// is a new migration copying the file, never an edit of the file alone. And every
/// procedure the migrations define has its file.
#[test]
fn every_procedure_matches_the_latest_migration_that_defines_it() {
    let migrations = files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations"),
        "sql",
    );
    let migrations: Vec<(PathBuf, String)> = migrations
        .into_iter()
        .map(|p| {
            let sql = without_comments(&std::fs::read_to_string(&p).expect("migration"));
            (p, sql)
        })
        .collect();
    let mut named = Vec::new();
    for path in procedure_files() {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_owned();
        let file = without_comments(&std::fs::read_to_string(&path).expect("procedure"));
        let current = definition_of(&file, &name)
            .unwrap_or_else(|| panic!("{} does not define {name}", path.display()));
        let (latest, migrated) = migrations
            .iter()
            .rev()
            .find_map(|(p, sql)| Some((p, definition_of(sql, &name)?)))
            .unwrap_or_else(|| panic!("no migration defines {name}"));
        assert_eq!(
            migrated,
            current,
            "{name}: {} differs from {}: add a migration that redefines it",
            latest.display(),
            path.display()
        );
        named.push(name);
    }
    for (path, sql) in &migrations {
        for definition in sql.split("CREATE PROCEDURE ").skip(1) {
            let name = definition.split('(').next().unwrap_or_default().trim();
            assert!(
                named.iter().any(|n| n == name),
                "{} defines {name}, which has no file in src/db/procedures",
                path.display()
            );
        }
    }
    assert!(named.len() >= 5, "only {named:?}");
}
