//! GitHub: webhooks (`X-Hub-Signature-256`), the REST API for contents and commit statuses,
//! and GitHub App authentication for check runs.

mod webhook;

pub use webhook::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, delivery_id, receive};
