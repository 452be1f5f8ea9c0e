use std::path::PathBuf;

use serde_json::Value;

use crate::support::Harness;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let h = Harness::new(false).await;
    let (status, body) = h.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("GANTRY_BLESS").is_some() {
        std::fs::write(committed(), &pretty).unwrap();
    }
    let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
    assert!(
        on_disk == pretty,
        "docs/openapi.json is stale: regenerate it with \
         `GANTRY_BLESS=1 cargo test -p gantry-server --test it openapi` and commit it"
    );
}

#[tokio::test]
async fn every_documented_path_is_routed() {
    let h = Harness::new(false).await;
    let doc = gantry_server::openapi::document();
    let id = uuid::Uuid::now_v7().to_string();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", &id)
            .replace("{job}", &id)
            .replace("{attempt}", "1")
            .replace("{step}", "0")
            .replace("{forge}", "github");
        for method in ops.as_object().unwrap().keys() {
            let req = http::Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let (status, body) = h.call(req).await;
            // An unrouted path answers 404/405 with an empty body; ours always say why.
            assert!(
                !body.is_empty() && status != 405,
                "{method} {path} is not routed ({status})"
            );
        }
    }
}
