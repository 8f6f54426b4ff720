//! The retention sweeper: every `worker.retention_interval_s`, the one worker that takes
//! the fleet-wide lease erases, tenant by tenant, the conversations whose last message is
//! older than the tenant's `retention_days`, in bounded batches (what is left waits for
//! the next round), counted in `chatfleet_conversations_erased_total{reason="retention"}`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Ctx;

/// Tenants read per page.
const TENANT_PAGE: u32 = 200;
/// Most conversations one tenant has erased per round.
const BATCH: u32 = 200;

/// Runs the sweeper until `shutdown`.
pub(crate) fn start(ctx: Arc<Ctx>, every: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match ctx.cache.take_lease("retention", every).await {
                Ok(true) => {
                    if let Err(e) = sweep(&ctx).await {
                        tracing::warn!(error = %e, "the retention sweep failed; it runs again next round");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take the retention lease"),
            }
        }
    });
}

/// One round over every tenant with a retention limit.
async fn sweep(ctx: &Ctx) -> shared::Result<()> {
    let mut after = 0;
    let mut erased = 0usize;
    loop {
        let page = ctx.db.clients().list(after, TENANT_PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id.get();
        for client in &page {
            let Some(tenant) = ctx.configs.get(client.id).await? else {
                continue;
            };
            let Some(days) = tenant.config.retention_days else {
                continue;
            };
            let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
            let old = ctx
                .db
                .tenant(client.id)
                .conversations()
                .older_than(before, BATCH)
                .await?;
            for conversation_id in old {
                shared::erasure::erase_conversation(
                    &ctx.db,
                    &ctx.conversations,
                    ctx.webhooks(),
                    client.id,
                    conversation_id,
                    "retention",
                )
                .await?;
                erased += 1;
            }
        }
    }
    if erased > 0 {
        tracing::info!(
            erased,
            "retention erased conversations past their tenants' limits"
        );
    }
    Ok(())
}
