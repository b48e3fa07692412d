//! The `axum` example's application: a Router, independent of how connections arrive (shared
//! with the axum tests). Its request timeout runs on `hyper_rt::timeout`: the reactor's timers on
//! a reactor thread, tokio's elsewhere.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::hyper_rt;

/// Largest upload (and request body of any route) accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 1 << 20;
/// Most lines `/stream` sends.
pub const MAX_LINES: u32 = 100_000;

/// GET `/`: "Hello, World!"; GET `/json`: a JSON object; POST `/json`: a greeting for the posted
/// `{"name": ...}`; GET `/stream?lines=N`: N lines as a streamed (chunked) body; POST `/upload`:
/// the body's length and CRC-32, bodies over 1 MiB refused with 413.
///
/// Every request passes [`guard`] first: a declared body over 1 MiB is refused at once, and a
/// request whose body (and handler) takes longer than `request_timeout` is answered 408.
pub fn app(request_timeout: Option<Duration>) -> Router {
    Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route("/json", get(json).post(greet))
        .route("/stream", get(stream))
        .route("/upload", post(upload))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(request_timeout, guard))
}

/// Refuses a `Content-Length` over [`BODY_LIMIT`] before routing (413, without waiting for the
/// body), and bounds the time to read the body and run the handler (408). On HTTP/1 either
/// refusal closes the connection: the rest of the body is not read.
async fn guard(State(limit): State<Option<Duration>>, req: Request, next: Next) -> Response {
    let h1 = req.version() < Version::HTTP_2;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return refuse(h1, StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB");
    }
    let Some(limit) = limit else {
        return next.run(req).await;
    };
    match hyper_rt::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(hyper_rt::Elapsed) => refuse(
            h1,
            StatusCode::REQUEST_TIMEOUT,
            "request not received and answered within the header timeout",
        ),
    }
}

fn refuse(h1: bool, status: StatusCode, why: &str) -> Response {
    tracing::info!(%status, "refusing a request: {why}");
    if h1 {
        (status, [(header::CONNECTION, "close")]).into_response()
    } else {
        status.into_response()
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub message: String,
}

async fn json() -> Json<Message> {
    Json(Message {
        message: "Hello, World!".to_string(),
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Greet {
    pub name: String,
}

async fn greet(Json(body): Json<Greet>) -> Json<Message> {
    Json(Message {
        message: format!("Hello, {}!", body.name),
    })
}

#[derive(Debug, Deserialize)]
pub struct Lines {
    pub lines: Option<u32>,
}

/// The `n`-th line `/stream` sends.
pub fn line(n: u32) -> String {
    format!("line {n}\n")
}

async fn stream(Query(q): Query<Lines>) -> Response {
    let lines = q.lines.unwrap_or(10);
    if lines > MAX_LINES {
        let msg = format!("at most {MAX_LINES} lines");
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    let body = futures::stream::iter((0..lines).map(|n| Ok::<_, Infallible>(line(n))));
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: usize,
    pub crc32: u32,
}

async fn upload(body: Bytes) -> Json<Uploaded> {
    Json(Uploaded {
        bytes: body.len(),
        crc32: crc32fast::hash(&body),
    })
}
