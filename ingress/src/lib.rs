//! chatfleet ingress: the HTTP front door. Channel adapters authenticate requests,
//! resolve the tenant, turn each message into an envelope and publish it with a confirm
//! before answering 2xx; outbound deliverers consume each channel's reply queue and
//! deliver (for the API channel: into the conversation's mailbox, read by long-polls).
//!
//! Raw channel payloads never leave the `channels` modules; only envelopes go on to the
//! broker. Everything is started by [`start`], so tests run ingress in-process on port 0.

mod admin;
mod admission;
mod channels;
mod console;
mod deliver;
mod edge;
pub mod error;
mod extract;
mod health;
mod longpoll;
mod openapi;
mod state;
mod stream;
mod trace_ids;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderName, Request};
use shared::cache::{
    AccountOwners, ApiKeyOwners, Cache, ConversationIds, Mailboxes, StreamEvents, TenantConfigs,
    broadcast,
};
use shared::db::Db;
use shared::ids::Channel;
use shared::knowledge::Knowledge;
use shared::mq::Broker;
use shared::sealed::DataKeys;
use shared::secrets::SecretBox;
use shared::settings::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use channels::session::SessionKeys;

pub(crate) use state::{AppState, Services};

/// Signs a WhatsApp webhook body as Meta does (tests, benchmarks).
pub use channels::whatsapp::signature::sign as sign_whatsapp_webhook;

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <openapi::ApiDoc as utoipa::OpenApi>::openapi()
}

/// The header carrying the request id (accepted from the caller, else generated).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A running ingress.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The admin API's and `/metrics`' own address, when `admin.bind` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Ends after `shutdown` fired and open requests and deliverers finished.
    pub task: JoinHandle<()>,
}

/// Connects to the database, broker and Redis, declares the topology, starts the
/// outbound deliverers and serves HTTP on `http.bind` until `shutdown` — the admin API and
/// `/metrics` on `admin.bind` instead when it is set, so only the channels face the
/// internet.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    shared::prometheus::install();
    let db = Db::connect(&settings.database).await?;
    let broker = Broker::connect(&settings.amqp, "chatfleet-ingress").await?;
    broker.declare_topology().await?;
    let cache = Cache::connect(&settings.redis).await?;
    let secrets = SecretBox::new(&settings.security.encryption_ring());
    let data_keys = DataKeys::new(db.clone(), secrets.clone(), cache.clone());
    let publisher = broker.publisher().await?.sealing(data_keys.clone());
    let mailboxes = Mailboxes::new(cache.clone());
    let stream_events = StreamEvents::new(cache.clone());
    let configs = TenantConfigs::new(db.clone(), cache.clone(), settings.tenancy.config_ttl);
    let owners = AccountOwners::new(db.clone(), cache.clone());
    let api_keys = ApiKeyOwners::new(db.clone(), cache.clone());
    let conversations = ConversationIds::new(db.clone(), cache.clone());
    broadcast::start(
        cache.clone(),
        vec![
            conversations.clone(),
            mailboxes.clone(),
            stream_events.clone(),
            configs.clone(),
            owners.listener(),
            api_keys.listener(),
            data_keys.clone(),
        ],
        shutdown.clone(),
    );
    let state = AppState::new(Services {
        db: db.clone(),
        acceptor: channels::accepting::Acceptor::start(db.clone()),
        broker: broker.clone(),
        publisher,
        cache,
        mailboxes,
        stream_events,
        configs,
        owners,
        api_keys,
        conversations,
        api: settings.api.clone(),
        whatsapp: settings.whatsapp.clone(),
        mobile: settings.mobile.clone(),
        sessions: SessionKeys::new(&settings.security.session_ring()),
        session_ttl: settings.sessions.ttl,
        admin: settings.admin.clone(),
        secrets,
        data_keys,
        tools: settings.tools.clone(),
        webhooks: settings.webhooks.clone(),
        llm: settings.llm.clone(),
        speech: settings.speech.clone(),
        knowledge: Knowledge::new(&settings.vector, &settings.embeddings, &settings.llm)?,
        edge: edge::Edge::new(settings.edge.clone(), &settings.http.trusted_proxies),
        plans: settings.plans.clone(),
        long_polls: std::sync::Arc::new(tokio::sync::Semaphore::new(settings.http.max_long_polls)),
        in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(settings.http.max_in_flight)),
        shutdown: shutdown.clone(),
    });

    let deliverers = [
        tokio::spawn(deliver::mailbox::run(state.clone(), Channel::Api)),
        tokio::spawn(deliver::mailbox::run(state.clone(), Channel::Widget)),
        tokio::spawn(deliver::mailbox::run(state.clone(), Channel::Mobile)),
        tokio::spawn(deliver::whatsapp::run(state.clone())),
        tokio::spawn(deliver::webhooks::run(state.clone())),
    ];

    // Kept to close the publisher's channel once the deliverers are done.
    let closing = state.clone();
    let timeout = settings.http.request_timeout;
    let (app, admin_listener) = match settings.admin.bind {
        None => (
            serve_layers(
                public_routes().merge(admin::routes(state.clone())),
                health::metrics_route(),
                state.clone(),
                timeout,
            ),
            None,
        ),
        Some(bind) => {
            let admin = serve_layers(
                admin::routes(state.clone()),
                health::metrics_route(),
                state.clone(),
                timeout,
            );
            let listener = tokio::net::TcpListener::bind(bind).await?;
            (
                serve_layers(public_routes(), Router::new(), state.clone(), timeout),
                Some((listener, admin)),
            )
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.http.bind).await?;
    let addr = listener.local_addr()?;
    let admin_addr = match &admin_listener {
        Some((listener, _)) => Some(listener.local_addr()?),
        None => None,
    };
    tracing::info!(%addr, ?admin_addr, "ingress listening");
    let admin_server = admin_listener
        .map(|(listener, admin)| tokio::spawn(serve(listener, admin, shutdown.clone(), "admin")));
    let task = tokio::spawn(async move {
        serve(listener, app, shutdown, "public").await;
        if let Some(admin) = admin_server {
            let _ = admin.await;
        }
        for deliverer in deliverers {
            let _ = deliverer.await;
        }
        closing.publisher().close().await;
        broker.close().await;
        db.close().await;
    });
    Ok(Running {
        addr,
        admin_addr,
        task,
    })
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    which: &'static str,
) {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, listener = which, "http server failed");
    }
}

/// The channels, admitted within `http.max_in_flight`.
fn public_routes() -> Router<AppState> {
    Router::new()
        .merge(channels::api::routes())
        .merge(channels::whatsapp::routes())
        .merge(channels::widget::routes())
        .merge(channels::mobile::routes())
}

/// `routes` admitted within `http.max_in_flight`, beside the health checks and
/// `unadmitted` (a probe or a scrape must not fail because the ingress is busy), with the
/// timeout, tracing and request-id layers.
fn serve_layers(
    routes: Router<AppState>,
    unadmitted: Router<AppState>,
    state: AppState,
    request_timeout: Duration,
) -> Router {
    let admitted = routes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        admission::admit,
    ));
    Router::new()
        .merge(admitted)
        .merge(health::probes())
        .merge(unadmitted)
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            request_timeout,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                // The matched route, not the raw path: paths can hold conversation ids.
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("unmatched");
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let span = tracing::info_span!("http", method = %request.method(), route, request_id, client_id = tracing::field::Empty);
                shared::telemetry::continue_trace(
                    &span,
                    channels::caller_traceparent(request.headers()).as_deref(),
                );
                span
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // Outermost: a caller's ids are dropped before anything reads them unless they
        // are well formed (a fresh request id replaces a dropped one).
        .layer(axum::middleware::map_request(trace_ids::keep_well_formed))
}
