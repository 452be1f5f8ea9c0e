//! Faults injected into the Kubernetes API client for the test suite (see
//! `gantry_core::inject`, site `kube.request`): a request answered as the API server answers when
//! it is overloaded or failing — 500, 429 with `Retry-After` — or one that timed out; a watch
//! that the server closes at once. The request is never sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use kube::client::Body;
use kube::client::DynBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps the client's stack (`kube::client::ClientBuilder::with_layer`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultLayer;

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService(inner)
    }
}

#[derive(Clone, Debug)]
pub struct FaultService<S>(S);

type Answer = Result<Response<Box<DynBody>>, BoxError>;

impl<S> tower::Service<Request<Body>> for FaultService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Box<DynBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match gantry_core::inject::fault("kube.request") {
            Some(fault) => {
                let answer = injected(fault, &request);
                Box::pin(async move { answer })
            }
            None => Box::pin(self.0.call(request)),
        }
    }
}

fn body(bytes: impl Into<Bytes>) -> Box<DynBody> {
    Box::new(Full::new(bytes.into()).map_err(|never: Infallible| -> BoxError { match never {} }))
}

fn injected(fault: gantry_core::inject::Fault, request: &Request<Body>) -> Answer {
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    if watch {
        // The server ends the watch before sending an event.
        return Ok(Response::new(body(Bytes::new())));
    }
    let (status, reason) = match fault.choose(&[0u16, 500, 429]) {
        0 => return Err(fault.describe("request timed out").into()),
        500 => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        _ => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
    };
    // The API server's error body: a `Status` (kubernetes.io/docs/reference/using-api/api-concepts).
    let status_body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": fault.describe(status.canonical_reason().unwrap_or("error")),
        "reason": reason,
        "code": status.as_u16(),
    });
    let mut response = Response::new(body(status_body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, "application/json".parse()?);
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(http::header::RETRY_AFTER, "1".parse()?);
    }
    Ok(response)
}
