//! `GET /admin/v1/whoami`: the operator a token belongs to and its scope (how the
//! console signs in and knows whether its changes will be refused).

use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;
use shared::db::Operator;

use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/v1/whoami", get(whoami))
}

/// The calling operator.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WhoAmI {
    /// The operator's name (`bootstrap` for the settings' admin.token).
    name: String,
    /// `read` or `write`.
    #[schema(example = "write")]
    scope: &'static str,
}

/// Who the presented token belongs to.
#[utoipa::path(get, path = "/admin/v1/whoami", security(("admin_token" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn whoami(Extension(operator): Extension<Operator>) -> Json<WhoAmI> {
    Json(WhoAmI {
        scope: operator.scope.as_str(),
        name: operator.name,
    })
}
