//! Integration tests of the pipeline language: one binary, one module per concern.

mod broken;
mod docs;
mod examples;
mod fuzzish;
mod planning;
mod schema;
mod support;
mod triggers;
