//! WhatsApp media the bot understands: a voice note (or any audio) becomes its
//! transcript, stored as the user's message; an image goes to a model that takes images
//! (the tenant's `llm_vision`) with its caption, fetched for the turn and never stored
//! (others read the caption and `[image]`); anything unreadable keeps today's
//! placeholder (`[audio]`), and the turn tells the model the tenant's
//! `media_fallback_message` (see [`unread`]).
//!
//! The file comes from the Graph API with the token of the number the message came to,
//! looked up among the message's own tenant's accounts (a media id is never fetched with
//! another tenant's token): `GET /{version}/{media_id}` gives a URL, which must be on
//! `whatsapp.media_host`, and `GET url` with the same bearer gives the bytes, refused
//! past `whatsapp.max_media_bytes` by the declared `file_size` and again while they
//! stream. Transcription is OpenAI's `POST /v1/audio/transcriptions` (multipart `file`,
//! `model`) at `speech.provider`. Transient failures (5xx, timeouts) are tried three
//! times; then the message falls back to its placeholder: the turn is answered, never
//! dead-lettered for a file. Media bytes and transcripts are never logged.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use shared::db::{AgentMode, Db, TenantConfig};
use shared::envelope::{Envelope, MessageContent};
use shared::ids::Channel;
use shared::secrets::SecretBox;
use shared::settings::{ProviderSettings, Settings};

use crate::llm::ChatImage;

/// What a voice note's stored text starts with: the model reads it as the user's words.
const VOICE_NOTE: &str = "[voice note]";
/// Tries of a transiently failing download or transcription.
const TRIES: usize = 3;

/// Fetches and transcribes WhatsApp media.
pub(crate) struct MediaReader {
    http: reqwest::Client,
    graph_base_url: String,
    api_version: String,
    media_host: String,
    max_bytes: u64,
    /// The transcription provider and model; `None`: no transcription.
    speech: Option<(ProviderSettings, String)>,
    /// What transcription costs (`speech.prices."<provider>/<model>"`); `None`: unpriced.
    speech_price: Option<shared::settings::MinutePrice>,
    /// `speech.provider`'s name (the cost metrics' label).
    speech_provider: String,
    secrets: SecretBox,
}

/// Why a file was not read.
#[derive(Debug)]
enum Unread {
    /// Worth another try (5xx, timeouts, connection failures).
    Transient(String),
    Permanent(String),
}

impl Unread {
    fn reason(&self) -> &str {
        match self {
            Self::Transient(r) | Self::Permanent(r) => r,
        }
    }
}

#[derive(Deserialize)]
struct MediaInfo {
    url: String,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    file_size: Option<u64>,
}

#[derive(Deserialize)]
struct Transcription {
    text: String,
    /// Seconds of audio (`verbose_json`), what transcription is priced by.
    #[serde(default)]
    duration: Option<f64>,
}

impl MediaReader {
    pub(crate) fn new(settings: &Settings) -> anyhow::Result<Self> {
        let speech = settings
            .llm
            .providers
            .get(&settings.speech.provider)
            .map(|p| (p.clone(), settings.speech.model.clone()));
        let speech_price = settings
            .speech
            .prices
            .get(&format!(
                "{}/{}",
                settings.speech.provider, settings.speech.model
            ))
            .cloned();
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            graph_base_url: settings
                .whatsapp
                .graph_base_url
                .trim_end_matches('/')
                .to_owned(),
            api_version: settings.whatsapp.api_version.clone(),
            media_host: settings.whatsapp.media_host.clone(),
            max_bytes: settings.whatsapp.max_media_bytes,
            speech,
            speech_price,
            speech_provider: settings.speech.provider.clone(),
            secrets: SecretBox::new(&settings.security.encryption_ring()),
        })
    }

    /// The text stored for the message of `env`: a WhatsApp voice note's transcript
    /// (when the tenant has `transcribe_audio` and a transcription provider is set),
    /// else what the message always reads as; and what a transcription cost
    /// (micro-units; `None`: none made, or unpriced).
    pub(crate) async fn stored_text(
        &self,
        db: &Db,
        env: &Envelope,
        transcribe: bool,
    ) -> (String, Option<u64>) {
        let placeholder = env.message.as_prompt_text();
        let Some(media_id) = transcribable(env) else {
            return (placeholder, None);
        };
        if !transcribe {
            return (placeholder, None);
        }
        let Some((provider, model)) = &self.speech else {
            return (placeholder, None);
        };
        let read = async {
            let (bytes, mime) = self.fetch(db, env, media_id).await?;
            self.transcribe(provider, model, bytes, &mime).await
        };
        match read.await {
            Ok(heard) => {
                let cost = self.transcription_cost(&heard);
                if heard.text.trim().is_empty() {
                    tracing::info!(client_id = %env.client_id, "the voice note had no words");
                    return (placeholder, cost);
                }
                (format!("{VOICE_NOTE} {}", heard.text.trim()), cost)
            }
            Err(unread) => {
                metrics::counter!(shared::metric::MEDIA_UNREAD).increment(1);
                tracing::warn!(client_id = %env.client_id, reason = unread.reason(), "a voice note was not transcribed");
                (placeholder, None)
            }
        }
    }

    /// What a transcription cost (`speech.prices`, by the minutes the provider heard).
    fn transcription_cost(&self, heard: &Transcription) -> Option<u64> {
        let (_, model) = self.speech.as_ref()?;
        let labels = [
            ("provider", self.speech_provider.clone()),
            ("model", model.clone()),
        ];
        match (&self.speech_price, heard.duration) {
            (Some(price), Some(seconds)) => {
                let cost = price.cost_micros(seconds);
                metrics::counter!(shared::metric::LLM_COST_MICROS, &labels).increment(cost);
                Some(cost)
            }
            _ => {
                metrics::counter!(shared::metric::LLM_UNPRICED_CALLS, &labels).increment(1);
                None
            }
        }
    }

    /// The image of a WhatsApp image message, for a model that takes images; `None` when
    /// it could not be fetched (logged and counted).
    pub(crate) async fn image(&self, db: &Db, env: &Envelope) -> Option<ChatImage> {
        let media_id = image_id(env)?;
        match self.fetch(db, env, media_id).await {
            Ok((bytes, mime)) if mime.starts_with("image/") => Some(ChatImage {
                mime,
                base64: base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            }),
            Ok((_, mime)) => {
                metrics::counter!(shared::metric::MEDIA_UNREAD).increment(1);
                tracing::warn!(client_id = %env.client_id, %mime, "an image message was not an image");
                None
            }
            Err(unread) => {
                metrics::counter!(shared::metric::MEDIA_UNREAD).increment(1);
                tracing::warn!(client_id = %env.client_id, reason = unread.reason(), "an image was not fetched");
                None
            }
        }
    }

    /// The file of a media id and its type, with the token of the tenant's number the
    /// message came to.
    async fn fetch(
        &self,
        db: &Db,
        env: &Envelope,
        media_id: &str,
    ) -> Result<(Vec<u8>, String), Unread> {
        let token = self.token(db, env).await?;
        let info_url = format!("{}/{}/{media_id}", self.graph_base_url, self.api_version);
        let info: MediaInfo = (|| async {
            let response = self
                .http
                .get(&info_url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| Unread::Transient(format!("Graph API unreachable: {e}")))?;
            let status = response.status();
            if !status.is_success() {
                return Err(refusal(status, "the media id"));
            }
            response
                .json::<MediaInfo>()
                .await
                .map_err(|e| Unread::Permanent(format!("unreadable media info: {e}")))
        })
        .retry(backoff())
        .when(|e| matches!(e, Unread::Transient(_)))
        .await?;
        if info.file_size.is_some_and(|size| size > self.max_bytes) {
            return Err(Unread::Permanent(format!(
                "the file is larger than whatsapp.max_media_bytes ({} bytes)",
                self.max_bytes
            )));
        }
        self.check_host(&info.url)?;
        let bytes = (|| self.download(&info.url, &token))
            .retry(backoff())
            .when(|e| matches!(e, Unread::Transient(_)))
            .await?;
        let mime = info
            .mime_type
            .unwrap_or_else(|| "application/octet-stream".into());
        Ok((bytes, mime))
    }

    /// The bytes at a media URL, given up past `max_bytes` while they stream.
    async fn download(&self, url: &str, token: &str) -> Result<Vec<u8>, Unread> {
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Unread::Transient(format!("media host unreachable: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal(status, "the media file"));
        }
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Unread::Transient(format!("media download cut: {e}")))?;
            if (bytes.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(Unread::Permanent(format!(
                    "the file grew past whatsapp.max_media_bytes ({} bytes) while downloading",
                    self.max_bytes
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Refuses a media URL off `whatsapp.media_host`.
    fn check_host(&self, url: &str) -> Result<(), Unread> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| Unread::Permanent("the Graph API gave an unreadable media URL".into()))?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        if host == self.media_host {
            Ok(())
        } else {
            Err(Unread::Permanent(format!(
                "the media URL is on {host}, not whatsapp.media_host"
            )))
        }
    }

    /// The access token of the number the message came to, among its tenant's accounts.
    async fn token(&self, db: &Db, env: &Envelope) -> Result<String, Unread> {
        let phone = env
            .channel_account
            .as_deref()
            .ok_or_else(|| Unread::Permanent("the message names no phone number".into()))?;
        let accounts = db.tenant(env.client_id).channel_accounts();
        let listed = accounts
            .list()
            .await
            .map_err(|e| Unread::Transient(e.to_string()))?;
        let account = listed
            .iter()
            .find(|a| a.channel == Channel::Whatsapp && a.external_account_id == phone)
            .ok_or_else(|| Unread::Permanent("the number is not the tenant's".into()))?;
        let sealed = accounts
            .sealed_credentials(account.id)
            .await
            .map_err(|e| Unread::Transient(e.to_string()))?
            .ok_or_else(|| Unread::Permanent("the number has no credentials".into()))?;
        self.secrets
            .whatsapp_access_token(env.client_id, &sealed)
            .map_err(Unread::Permanent)
    }

    /// The words of an audio file.
    async fn transcribe(
        &self,
        provider: &ProviderSettings,
        model: &str,
        bytes: Vec<u8>,
        mime: &str,
    ) -> Result<Transcription, Unread> {
        let url = format!(
            "{}/v1/audio/transcriptions",
            provider.base_url.trim_end_matches('/')
        );
        let extension = mime
            .split(['/', ';'])
            .nth(1)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .unwrap_or("bin");
        (|| async {
            let file = reqwest::multipart::Part::bytes(bytes.clone())
                .file_name(format!("voice.{extension}"))
                .mime_str(mime)
                .map_err(|e| Unread::Permanent(format!("unusable media type {mime:?}: {e}")))?;
            let form = reqwest::multipart::Form::new()
                .text("model", model.to_owned())
                .text("response_format", "verbose_json")
                .part("file", file);
            let mut request = self
                .http
                .post(&url)
                .timeout(provider.timeout)
                .multipart(form);
            if !provider.api_key.expose().is_empty() {
                request = request.bearer_auth(provider.api_key.expose());
            }
            let response = request
                .send()
                .await
                .map_err(|e| Unread::Transient(format!("transcription unreachable: {e}")))?;
            let status = response.status();
            if !status.is_success() {
                return Err(refusal(status, "the transcription"));
            }
            response
                .json::<Transcription>()
                .await
                .map_err(|e| Unread::Permanent(format!("unreadable transcription: {e}")))
        })
        .retry(backoff())
        .when(|e| matches!(e, Unread::Transient(_)))
        .await
    }
}

/// The media id of a WhatsApp voice note or audio file (what a transcript is made of).
pub(crate) fn transcribable(env: &Envelope) -> Option<&str> {
    match &env.message {
        MessageContent::Media {
            media_type,
            url_or_id,
            ..
        } if env.channel == Channel::Whatsapp && media_type == "audio" => Some(url_or_id),
        _ => None,
    }
}

/// The media id of a WhatsApp image.
pub(crate) fn image_id(env: &Envelope) -> Option<&str> {
    match &env.message {
        MessageContent::Media {
            media_type,
            url_or_id,
            ..
        } if env.channel == Channel::Whatsapp && media_type == "image" => Some(url_or_id),
        _ => None,
    }
}

/// A refusal by status: 5xx and 429 are worth another try.
fn refusal(status: reqwest::StatusCode, what: &str) -> Unread {
    let reason = format!("{what} was refused: {status}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Unread::Transient(reason)
    } else {
        Unread::Permanent(reason)
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(300))
        .with_max_times(TRIES - 1)
}

/// Whether a stored user message is a file the bot could not read (a placeholder such as
/// `[audio]`, `[video] caption`): the turn then tells the model the tenant's
/// `media_fallback_message`. An image's placeholder is a note the model can work with.
pub(crate) fn unread(text: &str) -> bool {
    ["[audio]", "[video]", "[document]", "[sticker]"]
        .iter()
        .any(|p| text.starts_with(p))
}

/// The tenant with its `media_fallback_message` as its first active capability, for a
/// turn whose messages include a file the bot could not read.
pub(crate) fn with_fallback_note(tenant: &TenantConfig) -> TenantConfig {
    let mut noted = tenant.clone();
    noted.modes.insert(
        0,
        AgentMode {
            module_key: "media_fallback".into(),
            prompt_fragment: format!(
                "About the user's latest message: {}",
                tenant.config.media_fallback_message
            ),
            is_active: true,
            priority: i32::MIN,
        },
    );
    noted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_of_unread_files_are_recognised_and_transcripts_are_not() {
        assert!(unread("[audio]"));
        assert!(unread("[document] invoice.pdf"));
        assert!(!unread("[voice note] what time do you open"));
        assert!(!unread("[image] is this the one?"));
        assert!(!unread("hello [audio]"));
    }
}
