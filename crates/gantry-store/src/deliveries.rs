//! Webhook deliveries, stored before they are acknowledged and deduplicated by the forge's
//! delivery id.

use gantry_core::{ForgeKind, RunId, Timestamp};
use sqlx::any::AnyRow;

use crate::codec::{self, Cols, json, ts};
use crate::{Result, Store};

/// What became of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Stored, not yet planned.
    Received,
    /// Planned into runs (possibly none, when no pipeline's `on:` matched).
    Planned,
    /// An event Gantry does not act on.
    Ignored,
    /// Planning failed (the forge could not be read, …).
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Received => "received",
            DeliveryState::Planned => "planned",
            DeliveryState::Ignored => "ignored",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "received" => Self::Received,
            "planned" => Self::Planned,
            "ignored" => Self::Ignored,
            "failed" => Self::Failed,
            other => return Err(codec::corrupt("delivery state", other)),
        })
    }
}

/// A delivery as it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    pub forge: ForgeKind,
    /// The forge's id for it (`X-GitHub-Delivery`, …).
    pub delivery_id: String,
    /// The forge's event name (`push`, `pull_request`, `Push Hook`, …).
    pub event: String,
    pub received_at: Timestamp,
    /// The body as received (verified, as text).
    pub payload: String,
}

/// A stored delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub forge: ForgeKind,
    pub delivery_id: String,
    pub event: String,
    pub received_at: Timestamp,
    pub payload: String,
    pub state: DeliveryState,
    pub reason: Option<String>,
    pub run_ids: Vec<RunId>,
}

fn from_row(row: &AnyRow) -> Result<Delivery> {
    let c = Cols(row);
    Ok(Delivery {
        forge: codec::from_json("forge", &format!("\"{}\"", c.str("forge")?))?,
        delivery_id: c.str("delivery_id")?,
        event: c.str("event")?,
        received_at: c.ts("received_at")?,
        payload: c.str("payload")?,
        state: DeliveryState::parse(&c.str("state")?)?,
        reason: c.opt_str("reason")?,
        run_ids: c.json("run ids", "run_ids")?,
    })
}

impl Store {
    /// Stores a delivery; `false` when one with the same forge and id was stored before (a
    /// redelivery), which is then left as it was.
    pub async fn insert_delivery(&self, d: &NewDelivery) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO deliveries (forge, delivery_id, event, received_at, payload, state, \
             reason, run_ids) VALUES ($1, $2, $3, $4, $5, 'received', NULL, '[]') \
             ON CONFLICT (forge, delivery_id) DO NOTHING",
        )
        .bind(d.forge.as_str())
        .bind(d.delivery_id.clone())
        .bind(d.event.clone())
        .bind(ts(d.received_at))
        .bind(d.payload.clone())
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records what became of a delivery.
    pub async fn set_delivery_outcome(
        &self,
        forge: ForgeKind,
        delivery_id: &str,
        state: DeliveryState,
        reason: Option<&str>,
        run_ids: &[RunId],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = $1, reason = $2, run_ids = $3 \
             WHERE forge = $4 AND delivery_id = $5",
        )
        .bind(state.as_str())
        .bind(reason.map(str::to_owned))
        .bind(json(&run_ids))
        .bind(forge.as_str())
        .bind(delivery_id.to_owned())
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    pub async fn get_delivery(
        &self,
        forge: ForgeKind,
        delivery_id: &str,
    ) -> Result<Option<Delivery>> {
        let row = sqlx::query(
            "SELECT forge, delivery_id, event, received_at, payload, state, reason, run_ids \
             FROM deliveries WHERE forge = $1 AND delivery_id = $2",
        )
        .bind(forge.as_str())
        .bind(delivery_id.to_owned())
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Deliveries still `received`: stored but not planned (the server stopped in between).
    pub async fn unplanned_deliveries(&self) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT forge, delivery_id, event, received_at, payload, state, reason, run_ids \
             FROM deliveries WHERE state = 'received' ORDER BY received_at",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }
}
