//! `chatfleet tenant create|api-key|move`: tenants without the admin API, and moving a
//! tenant to another database shard.

use anyhow::Context;
use clap::Subcommand;
use shared::db::{Db, NewClient, PAUSE_SETTLES};
use shared::ids::ClientId;
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
        /// The database shard to place it on (default: the one with the fewest tenants).
        #[arg(long)]
        shard: Option<String>,
    },
    /// Create an API key for a tenant and print it (shown only once).
    ApiKey {
        slug: String,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Move a tenant to another database shard: its traffic is paused (channels answer
    /// 503, deliveries wait on the retry ladder), its rows are copied and verified, the
    /// directory switches, traffic resumes and the old copy is deleted. Run it again to
    /// resume a move that was interrupted, or with --rollback to undo one.
    Move {
        slug: String,
        /// The shard to move to (a name from `database.shards`).
        #[arg(long, required_unless_present = "rollback")]
        to: Option<String>,
        /// Undo an interrupted move: delete the partial copy and resume where it was.
        #[arg(long, conflicts_with = "to")]
        rollback: bool,
    },
}

pub(crate) async fn run(settings: &Settings, command: TenantCommand) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database)
        .await
        .context("connecting to the database (run `chatfleet migrate` first)")?;
    match command {
        TenantCommand::Create {
            slug,
            name,
            plan,
            shard,
        } => {
            let new = NewClient::new(&slug, &name, plan.parse::<Plan>()?)?;
            let id = db.clients().create_on(&new, shard.as_deref()).await?;
            let placed = db.placement(id).await?.map(|p| p.shard);
            println!(
                "created tenant {slug} (id {id}) on shard {}",
                placed.as_deref().unwrap_or("home")
            );
        }
        TenantCommand::Move { slug, to, rollback } => {
            let client = db
                .clients()
                .by_slug(&slug)
                .await?
                .with_context(|| format!("no tenant with slug {slug:?}"))?;
            if rollback {
                let placement = db.cancel_move(client.id).await?;
                println!(
                    "rolled back: {slug} stays on shard {} and takes traffic again",
                    placement.shard
                );
            } else {
                move_tenant(&db, client.id, &slug, &to.unwrap_or_default()).await?;
            }
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

/// The steps of `chatfleet tenant move`, each of which may run again.
async fn move_tenant(db: &Db, id: ClientId, slug: &str, to: &str) -> anyhow::Result<()> {
    let placement = db
        .placement(id)
        .await?
        .with_context(|| format!("{slug} has no directory row: run `chatfleet migrate`"))?;
    let finished_here = placement.shard == to && placement.moving_to.is_none();
    if !finished_here {
        db.begin_move(id, to).await?;
        eprintln!(
            "{slug}: paused (its channels answer 503 and its deliveries wait); waiting {} s for every process to see it",
            PAUSE_SETTLES.as_secs()
        );
        tokio::time::sleep(PAUSE_SETTLES).await;
        let moved = db
            .copy_moving_tenant(id)
            .await
            .context("copying (the move stays open: run the same command again, or --rollback)")?;
        for table in moved.iter().filter(|t| t.rows > 0) {
            eprintln!(
                "  {:<22} {:>9} rows copied and verified",
                table.table, table.rows
            );
        }
        db.finish_move(id).await?;
        eprintln!("{slug}: on shard {to} now, taking traffic again");
    } else if placement.moved_from.is_none() {
        anyhow::bail!("{slug} is on shard {to} already");
    }
    db.purge_moved_from(id).await.context(
        "deleting the old copy (the tenant is served from its new shard; run the same command again to finish)",
    )?;
    println!("moved {slug} to shard {to}");
    Ok(())
}
