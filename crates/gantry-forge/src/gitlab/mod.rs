//! GitLab: webhooks (`X-Gitlab-Token`), the REST API (v4) for files and commit statuses.

mod client;
mod webhook;

pub use client::{GitlabClient, status_state};
pub use webhook::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TOKEN_HEADER, delivery_id, receive, receive_at,
};
