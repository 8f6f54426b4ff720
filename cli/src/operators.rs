//! `chatfleet admin-token create|list|revoke`: operators of the admin API, each with a
//! token of their own (printed once, stored as its SHA-256) and a scope, so the audit
//! log can say who changed what and a read-only colleague cannot change anything.

use clap::Subcommand;
use shared::db::{Db, Scope};
use shared::settings::Settings;

#[derive(Debug, Subcommand)]
pub(crate) enum AdminTokenCommand {
    /// Create a token for an operator and print it (shown only once).
    Create {
        /// The operator's name, as the audit log shows it (a-z, 0-9, '.', '-', '_', '@').
        #[arg(long)]
        name: String,
        /// read: may only read; write: may change too.
        #[arg(long, default_value = "write", value_parser = ["read", "write"])]
        scope: String,
    },
    /// Every operator token (never the tokens themselves).
    List,
    /// Revoke every token of an operator (refused from the next request on).
    Revoke {
        #[arg(long)]
        name: String,
    },
}

pub(crate) async fn run(settings: &Settings, command: AdminTokenCommand) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database).await?;
    let done = execute(&db, command).await;
    db.close().await;
    done
}

async fn execute(db: &Db, command: AdminTokenCommand) -> anyhow::Result<()> {
    let operators = db.operators();
    match command {
        AdminTokenCommand::Create { name, scope } => {
            let scope: Scope = scope.parse()?;
            let token = operators.create(&name, scope).await?;
            println!("{}", token.expose());
            eprintln!(
                "admin token for operator {name} ({}): store it now, it is not shown again",
                scope.as_str()
            );
        }
        AdminTokenCommand::List => {
            for t in operators.list().await? {
                let state = t
                    .revoked_at
                    .map_or("active".to_owned(), |at| format!("revoked {at}"));
                println!(
                    "{:>5}  {:<24} {:<5}  created {}  {state}",
                    t.id,
                    t.name,
                    t.scope.as_str(),
                    t.created_at
                );
            }
        }
        AdminTokenCommand::Revoke { name } => {
            let revoked = operators.revoke(&name).await?;
            if revoked == 0 {
                anyhow::bail!("operator {name:?} has no active token");
            }
            println!("revoked {revoked} token(s) of {name}");
        }
    }
    Ok(())
}
