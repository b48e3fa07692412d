//! The `axum` example's application: a Router, independent of how connections arrive (shared
//! with the axum tests).
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// Largest upload (and request body of any route) accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 1 << 20;
/// Most lines `/stream` sends.
pub const MAX_LINES: u32 = 100_000;

/// GET `/`: "Hello, World!"; GET `/json`: a JSON object; POST `/json`: a greeting for the posted
/// `{"name": ...}`; GET `/stream?lines=N`: N lines as a streamed (chunked) body; POST `/upload`:
/// the body's length and CRC-32, bodies over 1 MiB refused with 413.
pub fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route("/json", get(json).post(greet))
        .route("/stream", get(stream))
        .route("/upload", post(upload))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
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
