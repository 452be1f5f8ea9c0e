//! Helpers for the system tests live in `it/`.
