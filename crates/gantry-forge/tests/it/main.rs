//! gantry-forge's integration tests: one binary, one module per subject.

mod clients;
mod clone_credentials;
mod git_reader;
mod gitea_webhooks;
mod github_webhooks;
mod gitlab_webhooks;
mod mock;
mod never_panics;
mod prism;
mod support;
