//! How values are written to and read from columns, the same way in SQLite and PostgreSQL.

use gantry_core::{State, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Error, Result};

/// Fixed width, UTC, microseconds: such strings sort in time order.
const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

pub(crate) fn ts(t: Timestamp) -> String {
    t.format(TS_FORMAT).to_string()
}

pub(crate) fn opt_ts(t: Option<Timestamp>) -> Option<String> {
    t.map(ts)
}

pub(crate) fn parse_ts(s: &str) -> Result<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| corrupt("timestamp", format!("{s:?}: {e}")))
}

pub(crate) fn corrupt(what: &'static str, message: impl Into<String>) -> Error {
    Error::Corrupt {
        what,
        message: message.into(),
    }
}

pub(crate) fn json<T: Serialize>(value: &T) -> String {
    // Serializing plain data types to a string cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

pub(crate) fn from_json<T: DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e.to_string()))
}

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// Typed access to the columns of a row.
pub(crate) struct Cols<'r>(pub &'r AnyRow);

impl Cols<'_> {
    pub fn str(&self, col: &str) -> Result<String> {
        Ok(self.0.try_get::<String, _>(col)?)
    }

    pub fn opt_str(&self, col: &str) -> Result<Option<String>> {
        Ok(self.0.try_get::<Option<String>, _>(col)?)
    }

    pub fn i64(&self, col: &str) -> Result<i64> {
        Ok(self.0.try_get::<i64, _>(col)?)
    }

    pub fn opt_i64(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.0.try_get::<Option<i64>, _>(col)?)
    }

    pub fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.i64(col)? != 0)
    }

    pub fn ts(&self, col: &str) -> Result<Timestamp> {
        parse_ts(&self.str(col)?)
    }

    pub fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>> {
        self.opt_str(col)?.as_deref().map(parse_ts).transpose()
    }

    pub fn state(&self, col: &str) -> Result<State> {
        let s = self.str(col)?;
        s.parse().map_err(|_| corrupt("state", s))
    }

    pub fn uuid<T: From<uuid::Uuid>>(&self, col: &str) -> Result<T> {
        let s = self.str(col)?;
        uuid::Uuid::parse_str(&s)
            .map(T::from)
            .map_err(|e| corrupt("id", format!("{s:?}: {e}")))
    }

    pub fn json<T: DeserializeOwned>(&self, what: &'static str, col: &str) -> Result<T> {
        from_json(what, &self.str(col)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microseconds_and_sort_as_text() {
        let a = gantry_core::now();
        let b = a + chrono::Duration::milliseconds(1);
        let (sa, sb) = (ts(a), ts(b));
        assert!(sa < sb);
        assert_eq!(sa.len(), "2026-01-01T00:00:00.000000Z".len());
        let back = parse_ts(&sa).unwrap();
        assert_eq!(back.timestamp_micros(), a.timestamp_micros());
    }
}
