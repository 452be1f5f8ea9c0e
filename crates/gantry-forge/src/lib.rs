//! Gantry's forges — GitHub, GitLab, Gitea/Forgejo — on both sides of a run:
//!
//! - **Webhooks in**: [`receive`] verifies a delivery over its raw body (constant time, before
//!   anything parses it), parses it into an [`Incoming`] (a [`gantry_core::Trigger`], a ping, or
//!   the reason it starts nothing) and checks that the secret that verified it is valid for the
//!   repository it names ([`WebhookSecrets`]).
//! - **API out**: clients implementing [`gantry_core::Forge`] read pipeline files at an exact
//!   commit and report commit statuses (and, as a GitHub App, check runs).
//! - **git fallback**: [`GitReader`] reads files at a commit through a shallow fetch, for
//!   repositories Gantry has no API access to.

pub mod admit;
mod api;
mod git;
pub mod gitea;
pub mod github;
pub mod gitlab;
mod secret;
mod verify;
mod webhook;

pub use api::{ConfigError, DEFAULT_TIMEOUT, install_crypto_provider};
pub use git::{DEFAULT_GIT_TIMEOUT, GitReader};
pub use gitea::GiteaClient;
pub use github::{GithubApp, GithubAuth, GithubClient};
pub use gitlab::GitlabClient;
pub use secret::{Token, WebhookSecret, WebhookSecrets};
pub use verify::{VerifyError, hmac_sha256_hex_of};
pub use webhook::{
    Compare, CompareReason, Delivery, Incoming, ParseError, WebhookError, delivery_id, receive,
};
