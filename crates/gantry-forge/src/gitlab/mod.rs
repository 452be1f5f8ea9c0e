//! GitLab: webhooks (`X-Gitlab-Token`), the REST API (v4) for files and commit statuses.

mod webhook;

pub use webhook::{DELIVERY_HEADER, EVENT_HEADER, TOKEN_HEADER, delivery_id, receive};
