//! GitHub: webhooks (`X-Hub-Signature-256`), the REST API for contents and commit statuses,
//! and GitHub App authentication for check runs.

mod app;
mod client;
mod webhook;

pub use app::GithubApp;
pub use client::{DEFAULT_API_URL, GithubAuth, GithubClient, check_run_state, status_state};
pub use webhook::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, delivery_id, receive};
