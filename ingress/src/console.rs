//! The operator console (`/console/`, on the admin listener): one framework-free page,
//! its script and its style, embedded in the binary from `ingress/static/console/`
//! (nothing to build). The files are served without a token; the page signs in against
//! the admin API itself and sends the operator's token with every call. Its
//! Content-Security-Policy lets it load nothing but these files and call nothing but
//! this ingress, and never run a script that did not come from here.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../static/console/index.html");
const CONSOLE_JS: &str = include_str!("../static/console/console.js");
const CONSOLE_CSS: &str = include_str!("../static/console/console.css");

/// The page's own files and calls to this ingress only; no inline script or style, no
/// frames, no plugins, no form posts elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'self'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Rebuilt binaries ship new files under the same names.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
