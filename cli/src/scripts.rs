//! The project's own scripts (`scripts/`, from the checkout this binary was built in)
//! that `chaos` and `bench` run to start servers of a run's own.

use std::process::Command;

/// Runs `scripts/<name>` with `args`: its trimmed standard output, or its standard
/// error as the failure.
pub(crate) fn run(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let path = format!("{}/../scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&path).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
