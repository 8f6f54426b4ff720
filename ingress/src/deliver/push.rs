//! Push notifications for the mobile channel, in the FCM HTTP v1 request format:
//! `POST {mobile.push_url}` (with `{project_id}` filled in) carrying
//! `{ "message": { "token", "notification": { "title", "body" }, "data" } }` and the
//! tenant's access token as bearer. Project id and access token come from the tenant's
//! mobile channel account credentials (`fcm_project_id`, `fcm_access_token`), decrypted
//! only in memory.
//!
//! A notification is a courtesy on top of the mailbox, which already holds the reply:
//! it is sent in the background, transient failures (429, 5xx, timeouts) are retried
//! with exponential backoff up to `mobile.push_attempts` tries, and a token FCM reports
//! as unregistered (404) is forgotten. A failed notification never redelivers the reply.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};
use shared::envelope::Reply;
use shared::ids::{Channel, ClientId, ConversationId};
use shared::metric;

use crate::AppState;

/// Longest notification body, in characters (FCM payloads are at most 4 KiB).
const MAX_BODY_CHARS: usize = 240;

#[derive(Debug)]
enum PushError {
    /// Worth another try.
    Transient(String),
    /// FCM no longer knows the token.
    Unregistered,
    /// Anything else (bad credentials, malformed request): retrying will not help.
    Permanent(String),
}

/// Sends a notification for `reply` when its device registered a push token.
pub(crate) fn notify(
    state: &AppState,
    http: &reqwest::Client,
    reply: &Reply,
    conversation_id: ConversationId,
) {
    let (state, http) = (state.clone(), http.clone());
    let client_id = reply.client_id;
    let device = reply.external_id.expose().clone();
    let body: String = reply.text.expose().chars().take(MAX_BODY_CHARS).collect();
    let data = json!({
        "conversation_id": conversation_id.to_string(),
        "message_id": reply.id.to_string(),
    });
    tokio::spawn(async move {
        if let Err(e) = send(&state, &http, client_id, &device, &body, data).await {
            metrics::counter!(metric::PUSH_FAILED).increment(1);
            tracing::warn!(%client_id, error = %e, "push notification not sent");
        }
    });
}

async fn send(
    state: &AppState,
    http: &reqwest::Client,
    client_id: ClientId,
    device: &str,
    body: &str,
    data: Value,
) -> anyhow::Result<()> {
    let Some(token) = state
        .db()
        .tenant(client_id)
        .devices()
        .push_token(device)
        .await?
    else {
        return Ok(());
    };
    let Some((project, access_token)) = credentials(state, client_id).await? else {
        anyhow::bail!("the mobile channel account has no fcm_project_id / fcm_access_token");
    };
    let url = state.mobile().push_url.replace("{project_id}", &project);
    let message = json!({ "message": {
        "token": token,
        "notification": { "title": "New message", "body": body },
        "data": data,
        "android": { "priority": "high" },
    }});
    let attempt = || async {
        let response = http
            .post(&url)
            .bearer_auth(&access_token)
            .timeout(state.mobile().push_timeout)
            .json(&message)
            .send()
            .await
            .map_err(|e| PushError::Transient(format!("FCM unreachable: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        Err(match status.as_u16() {
            404 => PushError::Unregistered,
            429 | 500..=599 => PushError::Transient(format!("FCM answered {status}")),
            _ => PushError::Permanent(format!("FCM answered {status}: {detail:.200}")),
        })
    };
    let retries = state.mobile().push_attempts.saturating_sub(1) as usize;
    let sent = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(30))
                .with_max_times(retries)
                .with_jitter(),
        )
        .when(|e| matches!(e, PushError::Transient(_)))
        .notify(|e, wait| tracing::info!(error = ?e, ?wait, "push failed; retrying"))
        .await;
    match sent {
        Ok(()) => {
            metrics::counter!(metric::PUSH_SENT).increment(1);
            Ok(())
        }
        Err(PushError::Unregistered) => {
            tracing::info!(%client_id, "push token unregistered; forgotten");
            state
                .db()
                .tenant(client_id)
                .devices()
                .set_push_token(device, None)
                .await?;
            Ok(())
        }
        Err(PushError::Transient(e) | PushError::Permanent(e)) => Err(anyhow::anyhow!(e)),
    }
}

/// The tenant's FCM project and access token.
async fn credentials(
    state: &AppState,
    client_id: ClientId,
) -> anyhow::Result<Option<(String, String)>> {
    for sealed in state
        .db()
        .tenant(client_id)
        .channel_accounts()
        .sealed_for_channel(Channel::Mobile)
        .await?
    {
        let plain = state.secrets().open(client_id, Channel::Mobile, &sealed)?;
        let creds: Value = serde_json::from_slice(&plain).unwrap_or(Value::Null);
        let field = |k: &str| creds.get(k).and_then(Value::as_str).map(str::to_owned);
        if let (Some(project), Some(token)) = (field("fcm_project_id"), field("fcm_access_token")) {
            return Ok(Some((project, token)));
        }
    }
    Ok(None)
}
