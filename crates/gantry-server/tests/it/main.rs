//! gantry-server integration tests: the log API and SSE over real loopback connections,
//! secrets, metrics and readiness, the OpenAPI document, the viewer's pages, and the viewer in headless Chromium.

mod browser;
mod logs_api;
mod metrics;
mod openapi;
mod support;
mod viewer;
