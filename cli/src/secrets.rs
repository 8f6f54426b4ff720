//! `chatfleet secrets reseal`: re-seals every stored channel, tool and LLM credential,
//! webhook secret and conversation data key under the first key of the encryption key
//! ring, tenant by tenant, so the keys after it can be removed from
//! `security.encryption_keys`. A tenant whose tool credentials changed has its
//! configuration refreshed everywhere (workers carry tools in their cached
//! configuration). Safe to run again (what the first key sealed is left alone) and
//! beside a running fleet (a credential changed meanwhile is left to its writer).

use clap::Subcommand;
use shared::db::Db;
use shared::secrets::SecretBox;
use shared::settings::Settings;

#[derive(Debug, Subcommand)]
pub(crate) enum SecretsCommand {
    /// Re-encrypt every stored credential under the first key of the encryption key ring.
    Reseal,
}

/// What a reseal found.
#[derive(Debug, Default)]
struct Tally {
    resealed: u64,
    current: u64,
    /// Conversations' data keys, counted apart (there are many more of them).
    data_keys_resealed: u64,
    data_keys_current: u64,
    unreadable: Vec<String>,
}

pub(crate) async fn run(settings: &Settings, command: SecretsCommand) -> anyhow::Result<()> {
    let SecretsCommand::Reseal = command;
    let db = Db::connect(&settings.database).await?;
    let secrets = SecretBox::new(&settings.security.encryption_ring());
    let cache = shared::cache::Cache::connect(&settings.redis).await?;
    let configs = shared::cache::TenantConfigs::new(db.clone(), cache, settings.tenancy.config_ttl);
    let tally = reseal(&db, &secrets, &configs).await;
    db.close().await;
    let tally = tally?;
    println!(
        "{} credentials re-sealed under the first key, {} already were; \
         {} conversation data keys re-sealed, {} already were",
        tally.resealed, tally.current, tally.data_keys_resealed, tally.data_keys_current
    );
    if !tally.unreadable.is_empty() {
        anyhow::bail!(
            "no key of the ring opens {} stored credentials ({}): add the key that sealed \
             them to security.encryption_keys and run again",
            tally.unreadable.len(),
            tally.unreadable.join(", ")
        );
    }
    Ok(())
}

async fn reseal(
    db: &Db,
    secrets: &SecretBox,
    configs: &shared::cache::TenantConfigs,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut after = 0;
    loop {
        let page = db.clients().list(after, 200).await?;
        let Some(last) = page.last() else {
            return Ok(tally);
        };
        after = last.id.get();
        for client in &page {
            let accounts = db.tenant(client.id).channel_accounts();
            for (id, channel, sealed) in accounts.sealed_all().await? {
                match secrets.reseal(client.id, channel, &sealed) {
                    Ok(None) => tally.current += 1,
                    Ok(Some(new)) => {
                        if accounts.replace_sealed(id, &sealed, &new).await? {
                            tally.resealed += 1;
                        }
                    }
                    Err(_) => tally
                        .unreadable
                        .push(format!("tenant {} account {id}", client.id)),
                }
            }
            let tools = db.tenant(client.id).tools();
            let mut changed = false;
            for tool in tools.list().await? {
                let Some(sealed) = tool.auth_sealed else {
                    continue;
                };
                match secrets.reseal_tool_auth(client.id, &tool.name, &sealed) {
                    Ok(None) => tally.current += 1,
                    Ok(Some(new)) => {
                        if tools.replace_sealed(&tool.name, &sealed, &new).await? {
                            tally.resealed += 1;
                            changed = true;
                        }
                    }
                    Err(_) => tally
                        .unreadable
                        .push(format!("tenant {} tool {}", client.id, tool.name)),
                }
            }
            reseal_webhooks(db, secrets, client.id, &mut tally).await?;
            reseal_data_keys(db, secrets, client.id, &mut tally).await?;
            changed |= reseal_llm_keys(db, secrets, client.id, &mut tally).await?;
            if changed {
                configs.refresh(client.id).await?;
            }
        }
    }
}

/// Re-seals the data keys of the tenant's conversations (the key itself stays, so what
/// it sealed on the broker opens as before).
async fn reseal_data_keys(
    db: &Db,
    secrets: &SecretBox,
    client_id: shared::ids::ClientId,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let conversations = db.tenant(client_id).conversations();
    let mut after = 0;
    loop {
        let page = conversations.sealed_data_keys(after, 500).await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = last.get();
        for (conversation_id, sealed) in page {
            match secrets.reseal_data_key(client_id, conversation_id, &sealed) {
                Ok(None) => tally.data_keys_current += 1,
                Ok(Some(new)) => {
                    if conversations
                        .replace_data_key(conversation_id, &sealed, &new)
                        .await?
                    {
                        tally.data_keys_resealed += 1;
                    }
                }
                Err(_) => tally.unreadable.push(format!(
                    "tenant {client_id} conversation {conversation_id}'s data key"
                )),
            }
        }
    }
}

/// Re-seals the tenant's own LLM keys; true when one changed (cached configurations
/// carry them).
async fn reseal_llm_keys(
    db: &Db,
    secrets: &SecretBox,
    client_id: shared::ids::ClientId,
    tally: &mut Tally,
) -> anyhow::Result<bool> {
    let keys = db.tenant(client_id).llm_credentials();
    let mut changed = false;
    for key in keys.list().await? {
        match secrets.reseal_llm_key(client_id, &key.provider, &key.key_sealed) {
            Ok(None) => tally.current += 1,
            Ok(Some(new)) => {
                if keys
                    .replace_sealed(&key.provider, &key.key_sealed, &new)
                    .await?
                {
                    tally.resealed += 1;
                    changed = true;
                }
            }
            Err(_) => tally
                .unreadable
                .push(format!("tenant {client_id} LLM key for {}", key.provider)),
        }
    }
    Ok(changed)
}

/// Re-seals the tenant's webhook signing secrets (the current one, and the one before
/// the last rotation).
async fn reseal_webhooks(
    db: &Db,
    secrets: &SecretBox,
    client_id: shared::ids::ClientId,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let webhooks = db.tenant(client_id).webhooks();
    for (id, current, previous) in webhooks.sealed_all().await? {
        let reseal = |sealed: &[u8]| secrets.reseal_webhook_secret(client_id, id, sealed);
        let (Ok(new_current), new_previous) = (
            reseal(&current),
            previous.as_deref().map(reseal).transpose(),
        ) else {
            tally
                .unreadable
                .push(format!("tenant {client_id} webhook {id}"));
            continue;
        };
        let new_previous: Option<Vec<u8>> = new_previous
            .unwrap_or_else(|_| {
                tally
                    .unreadable
                    .push(format!("tenant {client_id} webhook {id} (previous secret)"));
                None
            })
            .flatten();
        if new_current.is_none() && new_previous.is_none() {
            tally.current += 1;
            continue;
        }
        let current_pair = (
            current.as_slice(),
            new_current.as_deref().unwrap_or(&current),
        );
        let previous_pair = previous
            .as_deref()
            .map(|old| (old, new_previous.as_deref().unwrap_or(old)));
        if webhooks
            .replace_sealed(id, current_pair, previous_pair)
            .await?
        {
            tally.resealed += 1;
        }
    }
    Ok(())
}
