//! `POST /hooks/{forge}`: verify, parse, store, answer — plan later.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gantry_core::ForgeKind;
use gantry_forge::{Incoming, WebhookSecrets};
use gantry_store::NewDelivery;
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::error::STORAGE_UNAVAILABLE;
use crate::intake::{self, StoredTrigger};
use crate::{ApiError, AppState, Ops};

fn forge_kind(name: &str) -> Option<ForgeKind> {
    match name {
        "github" => Some(ForgeKind::Github),
        "gitlab" => Some(ForgeKind::Gitlab),
        // Forgejo is Gitea's fork and sends the same payloads.
        "gitea" | "forgejo" => Some(ForgeKind::Gitea),
        _ => None,
    }
}

pub async fn receive(
    State(state): State<AppState>,
    Extension(ops): Extension<Ops>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = forge_kind(&forge).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no forge `{forge}`: use /hooks/github, /hooks/gitlab or /hooks/gitea"
        ))
    })?;
    let empty = WebhookSecrets::default();
    let secrets = state.webhook_secrets.get(&kind).unwrap_or(&empty);
    let delivery = match gantry_forge::receive(kind, &headers, &body, secrets) {
        Ok(delivery) => delivery,
        Err(err) => {
            // The id is untrusted too: the log gets no more of it than an id can be long.
            let id = gantry_forge::delivery_id(kind, &headers).map(|id| {
                let max = gantry_forge::admit::MAX_DELIVERY_ID;
                match id.char_indices().nth(max) {
                    Some((cut, _)) => format!("{}… ({} bytes)", &id[..cut], id.len()),
                    None => id,
                }
            });
            tracing::warn!(forge = %kind, delivery = ?id, error = %err, "webhook refused");
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return Ok((status, Json(json!({ "error": err.to_string() }))).into_response());
        }
    };
    let span =
        tracing::info_span!("delivery", forge = %kind, id = ?delivery.id, event = %delivery.event);
    let _enter = span.enter();
    match delivery.incoming {
        Incoming::Ping => Ok((StatusCode::OK, Json(json!({ "status": "pong" }))).into_response()),
        Incoming::Ignored { reason } => {
            tracing::info!(%reason, "delivery starts nothing");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "status": "ignored", "reason": reason })),
            )
                .into_response())
        }
        Incoming::Trigger { trigger, compare } => {
            // While the data directory cannot be written, refuse rather than accept a
            // delivery that may never become a run: the forge shows a failed delivery, which
            // can be redelivered, instead of a lost one.
            if let Err(reason) = ops.metrics.storage().check().await {
                tracing::warn!(%reason, "delivery refused: storage cannot be written");
                return Err(ApiError::Unavailable(STORAGE_UNAVAILABLE.to_owned()));
            }
            // Without a delivery id there is nothing to dedupe by: give it one of our own.
            let id = delivery
                .id
                .unwrap_or_else(|| format!("gantry-{}", uuid::Uuid::now_v7()));
            let stored = StoredTrigger {
                trigger: *trigger,
                compare: compare.map(|c| (c.before, c.after)),
            };
            let new = NewDelivery {
                forge: kind,
                delivery_id: id.clone(),
                event: delivery.event,
                received_at: gantry_core::now(),
                payload: serde_json::to_string(&stored).map_err(ApiError::internal)?,
            };
            let inserted = match state.engine.store().insert_delivery(&new).await {
                Ok(inserted) => inserted,
                Err(err) => {
                    if err.is_unavailable() {
                        ops.metrics
                            .storage_failed("database", format!("cannot store a delivery: {err}"));
                    }
                    return Err(err.into());
                }
            };
            if !inserted {
                let existing = state.engine.store().get_delivery(kind, &id).await?;
                let (runs, outcome) = existing
                    .map(|d| (d.run_ids, d.state.as_str()))
                    .unwrap_or_default();
                tracing::info!("redelivery: no new run");
                return Ok((
                    StatusCode::OK,
                    Json(json!({ "status": "duplicate", "delivery": id, "state": outcome, "runs": runs })),
                )
                    .into_response());
            }
            let app = state.clone();
            let plan_id = id.clone();
            tokio::spawn(async move {
                intake::plan_delivery(&app, kind, &plan_id, stored).await;
            });
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "status": "accepted", "delivery": id })),
            )
                .into_response())
        }
    }
}
