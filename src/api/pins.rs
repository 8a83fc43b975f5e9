//! The IPFS Pinning Service API over HTTP (ipfs/pinning-services-api-spec):
//! `GET`/`POST /pins`, `GET`/`POST`/`DELETE /pins/{requestid}`, JSON in and out,
//! errors as the spec's `Failure`. Served on the API's Unix socket, on its TCP address
//! (with the API's token) and, alone, on `api.pins_listen` (with the token in
//! `REPO/pins.token`); never on the browser-facing address.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use super::server::{bearer_matches, json_response, ApiState};
use crate::daemon::pinning::Pinning;
use crate::pinning::{Failure, FailureError, ListQuery, Pin, PinResults, PinningError};

/// The token file of `api.pins_listen`, in the repository (mode 0600).
pub const PINS_TOKEN_NAME: &str = "pins.token";

/// The Pinning Service API's routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/pins", get(list).post(add)).route(
        "/pins/{requestid}",
        get(status).post(replace).delete(remove),
    )
}

/// The spec's error body with `status`.
pub fn failure(status: StatusCode, reason: &str, details: impl Into<String>) -> Response {
    json_response(
        status,
        &Failure {
            error: FailureError {
                reason: reason.to_string(),
                details: Some(details.into()),
            },
        },
    )
}

/// The answer to a request without the right token.
pub fn unauthorized() -> Response {
    failure(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "this address needs `Authorization: Bearer TOKEN` with the node's pinning token",
    )
}

fn error(err: &PinningError) -> Response {
    let (status, reason) = match err {
        PinningError::Invalid(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        PinningError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        PinningError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        PinningError::Db(_) | PinningError::Damaged(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR")
        }
    };
    failure(status, reason, err.to_string())
}

/// Runs `job` with the pinning task on the blocking pool.
async fn run<T: Send + 'static>(
    state: &ApiState,
    job: impl FnOnce(&Pinning) -> Result<T, PinningError> + Send + 'static,
) -> Result<(Pinning, T), Response> {
    let Some(pinning) = state.pinning.clone() else {
        return Err(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the pinning service runs only in the daemon",
        ));
    };
    let worker = pinning.clone();
    match state.pool.run(move || job(&worker)).await {
        Ok(Ok(value)) => Ok((pinning, value)),
        Ok(Err(err)) => Err(error(&err)),
        Err(closed) => Err(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            closed.to_string(),
        )),
    }
}

fn parse_pin(body: &[u8]) -> Result<Pin, PinningError> {
    serde_json::from_slice(body)
        .map_err(|err| PinningError::Invalid(format!("the body is not a Pin object: {err}")))
}

async fn list(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let query = match ListQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(query) => query,
        Err(err) => return error(&err),
    };
    match run(&state, move |pinning| pinning.requests().list(&query)).await {
        Ok((pinning, (count, requests))) => {
            let delegates = pinning.delegates().await;
            json_response(
                StatusCode::OK,
                &PinResults {
                    count,
                    results: requests
                        .iter()
                        .map(|request| request.status_view(&delegates))
                        .collect(),
                },
            )
        }
        Err(response) => response,
    }
}

async fn add(State(state): State<ApiState>, body: Bytes) -> Response {
    let pin = match parse_pin(&body) {
        Ok(pin) => pin,
        Err(err) => return error(&err),
    };
    match run(&state, move |pinning| pinning.create(pin, None)).await {
        Ok((pinning, request)) => json_response(
            StatusCode::ACCEPTED,
            &request.status_view(&pinning.delegates().await),
        ),
        Err(response) => response,
    }
}

async fn status(State(state): State<ApiState>, Path(requestid): Path<String>) -> Response {
    match run(&state, move |pinning| pinning.requests().get(&requestid)).await {
        Ok((pinning, request)) => json_response(
            StatusCode::OK,
            &request.status_view(&pinning.delegates().await),
        ),
        Err(response) => response,
    }
}

async fn replace(
    State(state): State<ApiState>,
    Path(requestid): Path<String>,
    body: Bytes,
) -> Response {
    let pin = match parse_pin(&body) {
        Ok(pin) => pin,
        Err(err) => return error(&err),
    };
    match run(&state, move |pinning| pinning.create(pin, Some(requestid))).await {
        Ok((pinning, request)) => json_response(
            StatusCode::ACCEPTED,
            &request.status_view(&pinning.delegates().await),
        ),
        Err(response) => response,
    }
}

async fn remove(State(state): State<ApiState>, Path(requestid): Path<String>) -> Response {
    match run(&state, move |pinning| pinning.remove(&requestid)).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(response) => response,
    }
}

/// Serves the Pinning Service API alone on `listener`, where every request must carry
/// `Authorization: Bearer TOKEN` (the content of `REPO/pins.token`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    token: String,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let token = Arc::new(token);
    let app = routes()
        .fallback(|| async {
            failure(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "this address serves /pins only",
            )
        })
        .with_state(state)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let token = token.clone();
            async move {
                if bearer_matches(&request, &token) {
                    next.run(request).await
                } else {
                    unauthorized()
                }
            }
        }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}
