//! The operator console (`/console/`, on the admin listener): a framework-free page, its
//! style and its scripts (ES modules), embedded in the binary from
//! `ingress/static/console/` (nothing to build). The files are served without a token;
//! the page signs in against the admin API itself and sends the operator's token with
//! every call. Its Content-Security-Policy lets it load nothing but these files and call
//! nothing but this ingress, and never run a script that did not come from here.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

const HTML: &str = "text/html; charset=utf-8";
const SCRIPT: &str = "text/javascript; charset=utf-8";
const STYLE: &str = "text/css; charset=utf-8";

/// The page's files under `/console/`: name, content type, content.
const FILES: [(&str, &str, &str); 8] = [
    ("", HTML, include_str!("../static/console/index.html")),
    (
        "console.css",
        STYLE,
        include_str!("../static/console/console.css"),
    ),
    (
        "console.js",
        SCRIPT,
        include_str!("../static/console/console.js"),
    ),
    ("api.js", SCRIPT, include_str!("../static/console/api.js")),
    ("dom.js", SCRIPT, include_str!("../static/console/dom.js")),
    (
        "tenant.js",
        SCRIPT,
        include_str!("../static/console/tenant.js"),
    ),
    (
        "conversations.js",
        SCRIPT,
        include_str!("../static/console/conversations.js"),
    ),
    (
        "replay.js",
        SCRIPT,
        include_str!("../static/console/replay.js"),
    ),
];

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
        .route("/console/", get(|| async { file("") }))
        .route(
            "/console/{name}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    let Some((_, content_type, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found(format!("the console has no file {name:?}")).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Rebuilt binaries ship new files under the same names.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response()
}
