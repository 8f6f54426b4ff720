//! `chatfleet tenant create|api-key`: tenants without the admin API.

use anyhow::Context;
use clap::Subcommand;
use shared::db::{Db, NewClient};
use shared::settings::Settings;
use shared::tenant::Plan;

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant with the default configuration.
    Create {
        /// Public handle: 2-64 of a-z, 0-9 and '-'.
        #[arg(long)]
        slug: String,
        /// Display name (used in the system prompt).
        #[arg(long)]
        name: String,
        /// starter | growth | enterprise
        #[arg(long, default_value = "starter")]
        plan: String,
    },
    /// Create an API key for a tenant and print it (shown only once).
    ApiKey {
        slug: String,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

pub(crate) async fn run(settings: &Settings, command: TenantCommand) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database)
        .await
        .context("connecting to the database (run `chatfleet migrate` first)")?;
    match command {
        TenantCommand::Create { slug, name, plan } => {
            let new = NewClient::new(&slug, &name, plan.parse::<Plan>()?)?;
            let id = db.clients().create(&new).await?;
            println!("created tenant {slug} (id {id})");
        }
        TenantCommand::ApiKey { slug, name } => {
            let client = db
                .clients()
                .by_slug(&slug)
                .await?
                .with_context(|| format!("no tenant with slug {slug:?}"))?;
            let key = db.tenant(client.id).api_keys().create(&name).await?;
            println!("{}", key.key.expose());
            eprintln!(
                "API key {} for {slug}: store it now, it is not shown again",
                key.prefix
            );
        }
    }
    db.close().await;
    Ok(())
}
