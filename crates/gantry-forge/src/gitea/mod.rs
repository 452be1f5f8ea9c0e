//! Gitea and Forgejo: webhooks (`X-Gitea-Signature` / `X-Forgejo-Signature`), the REST API
//! (v1) for files and commit statuses.

mod client;
mod webhook;

pub use client::{GiteaClient, status_state};
pub use webhook::{DELIVERY_HEADERS, EVENT_HEADERS, SIGNATURE_HEADERS, delivery_id, receive};
