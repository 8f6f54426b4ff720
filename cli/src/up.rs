//! `chatfleet up`: the whole platform in one process, for trying it out locally.
//! Applies migrations, declares the topology, makes sure the `demo` tenant exists and
//! prints a fresh API key for it, starts the LLM simulator when no LLM answers at the
//! configured URL (and says so loudly), then runs ingress and worker until Ctrl-C.

use std::time::Duration;

use clap::Args;
use serde_json::json;
use shared::db::{AgentMode, ConfigUpdate, Db, NewClient};
use shared::ids::{Channel, ClientId};
use shared::mq::Broker;
use shared::settings::{ProviderKind, Settings};
use shared::tenant::{PersonaTone, Plan};
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions};

/// Prints a line; a closed stdout (`chatfleet up | head`) must not bring the platform
/// down, so write errors are ignored.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Always use the LLM simulator, even if an LLM answers.
    #[arg(long)]
    sim: bool,
}

const DEMO_SLUG: &str = "demo";

pub(crate) async fn run(
    mut settings: Settings,
    args: UpArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Db::migrate(&settings.database).await?;
    let broker = Broker::connect(&settings.amqp, "chatfleet-up").await?;
    broker.declare_topology().await?;
    broker.close().await;
    let (client_id, api_key) = demo_tenant(&db).await?;

    if args.sim || !llm_answers(&settings).await {
        let sim = LlmSim::start(
            "127.0.0.1:0".parse()?,
            SimOptions {
                latency: Duration::from_millis(300),
                error_rate: 0.0,
                word_delay: Duration::ZERO,
            },
            shutdown.clone(),
        )
        .await?;
        let why = if args.sim {
            "--sim was given".to_owned()
        } else {
            let p = &settings.llm.providers[&settings.llm.default_provider];
            format!("no LLM answered at {}", p.base_url)
        };
        eprintln!();
        eprintln!("*****************************************************************");
        eprintln!("  USING THE LLM SIMULATOR ({why}).");
        eprintln!("  Replies are canned echoes, not a real model. To use a real one,");
        eprintln!("  start Ollama or set CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL.");
        eprintln!("*****************************************************************");
        eprintln!();
        for provider in settings.llm.providers.values_mut() {
            provider.base_url = sim.base_url();
        }
    }

    let ingress = ingress::start(settings.clone(), shutdown.clone()).await?;
    let worker = tokio::spawn(worker::run(settings.clone(), shutdown.clone()));
    let base = format!("http://{}", ingress.addr);
    demo_widget(&db, client_id, ingress.addr.port()).await?;
    db.close().await;
    out!("chatfleet is up: ingress on {base}, one worker. Ctrl-C drains and stops.\n");
    out!("Demo tenant {DEMO_SLUG:?}, API key (new for this run):\n  {api_key}\n");
    out!("Send a message:");
    out!(
        "  curl -s -X POST {base}/api/v1/messages -H 'Authorization: Bearer {api_key}' \\\n    -H 'Content-Type: application/json' -H 'Idempotency-Key: try-1' \\\n    -d '{{\"conversation_id\":\"try-1\",\"text\":\"Hello there\"}}'"
    );
    out!(
        "Read the reply (your message is the conversation's first, so this waits up to 20 s for what comes after it):"
    );
    out!(
        "  curl -s '{base}/api/v1/conversations/try-1/messages?after=1&wait=20' -H 'Authorization: Bearer {api_key}'"
    );
    out!("The whole conversation, and the cursor to poll after: the same with after=0.");
    out!("Chat in the browser through the website widget: {base}/widget/demo?client={DEMO_SLUG}");
    let console = ingress
        .admin_addr
        .map_or_else(|| base.clone(), |addr| format!("http://{addr}"));
    let sign_in = if settings.admin.token.expose().is_empty() {
        "a token from `chatfleet admin-token create --name <you>`"
    } else {
        "the settings' admin.token (\"dev-admin-token-change-me\" unless you set one)"
    };
    out!(
        "Run tenants and answer handoffs in the operator console: {console}/console/ (sign in with {sign_in})"
    );
    worker.await??;
    ingress.task.await?;
    Ok(())
}

/// Makes sure the demo tenant exists with a recognisable persona; returns it and a new
/// API key.
async fn demo_tenant(db: &Db) -> anyhow::Result<(ClientId, String)> {
    let client_id = match db.clients().by_slug(DEMO_SLUG).await? {
        Some(client) => client.id,
        None => {
            let id = db
                .clients()
                .create(&NewClient::new(DEMO_SLUG, "Demo Shop", Plan::Starter)?)
                .await?;
            let mut config: ConfigUpdate = db
                .tenant(id)
                .configs()
                .get()
                .await?
                .ok_or_else(|| anyhow::anyhow!("demo tenant has no configuration"))?
                .into();
            config.persona_name = "Ava".into();
            config.persona_tone = PersonaTone::Friendly;
            db.tenant(id).configs().update(&config).await?;
            db.tenant(id)
                .configs()
                .create_mode(&AgentMode {
                    module_key: "support".into(),
                    prompt_fragment: "Help customers with orders, shipping and returns.".into(),
                    is_active: true,
                    priority: 10,
                })
                .await?;
            id
        }
    };
    let key = db
        .tenant(client_id)
        .api_keys()
        .create("chatfleet up")
        .await?;
    Ok((client_id, key.key.expose().clone()))
}

/// Lets the demo page of this ingress (on `port`) embed the demo tenant's widget.
async fn demo_widget(db: &Db, client_id: ClientId, port: u16) -> anyhow::Result<()> {
    let origins = json!({ "allowed_origins": [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ]});
    match db
        .tenant(client_id)
        .channel_accounts()
        .create(
            Channel::Widget,
            &format!("demo-site-{port}"),
            None,
            &origins,
        )
        .await
    {
        Ok(_) | Err(shared::Error::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Whether the default provider answers its model listing within 2 s.
async fn llm_answers(settings: &Settings) -> bool {
    let Some(provider) = settings.llm.providers.get(&settings.llm.default_provider) else {
        return false;
    };
    let path = match provider.kind {
        ProviderKind::Ollama => "/api/tags",
        ProviderKind::Openai => "/v1/models",
    };
    let url = format!("{}{path}", provider.base_url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut request = client.get(url).timeout(Duration::from_secs(2));
    if !provider.api_key.expose().is_empty() {
        request = request.bearer_auth(provider.api_key.expose());
    }
    matches!(request.send().await, Ok(r) if r.status().is_success())
}
