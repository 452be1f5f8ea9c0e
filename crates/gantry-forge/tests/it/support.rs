use std::path::PathBuf;

use gantry_core::Trigger;
use gantry_forge::{Delivery, Incoming};
use http::{HeaderMap, HeaderName, HeaderValue};

pub fn fixtures(forge: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(forge)
}

pub fn fixture(forge: &str, name: &str) -> Vec<u8> {
    let path = fixtures(forge).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    gantry_forge::hmac_sha256_hex_of(secret.as_bytes(), body)
}

#[track_caller]
pub fn trigger(delivery: &Delivery) -> &Trigger {
    match &delivery.incoming {
        Incoming::Trigger { trigger, .. } => trigger,
        other => panic!("expected a trigger, got {other:?}"),
    }
}

#[track_caller]
pub fn ignored(delivery: &Delivery) -> &str {
    match &delivery.incoming {
        Incoming::Ignored { reason } => reason,
        other => panic!("expected an ignored delivery, got {other:?}"),
    }
}
