//! Pages of stored lines shared by the viewers that fell behind the ring: a hundred viewers
//! behind by the same lines read them from the store, and encode them as JSON, once instead of
//! a hundred times.
//!
//! A page is [`PAGE_LINES`] lines at a fixed place (lines `k·N + 1 ..= (k + 1)·N`), so viewers
//! at different lines share it, and the first viewer to need a page reads it while the others
//! wait for it. Stored lines never change, so a page stays right; a page read while it was
//! still the end of the log comes back short, and a viewer that needs a line past it reads that
//! line from the store itself and drops the page, so the next viewer reads it anew.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use crate::{FOLLOW_BATCH, Logs, Result, SharedLine, StepKey};

/// Lines in a shared page.
pub(crate) const PAGE_LINES: u64 = FOLLOW_BATCH as u64;
/// Text bytes of the pages kept, and pages, at most (the oldest go first; their JSON is about
/// as much again as their text).
const KEPT_BYTES: usize = 8 * 1024 * 1024;
const KEPT_PAGES: usize = 1024;

type Page = Arc<[Arc<SharedLine>]>;
type Cell = Arc<OnceCell<Page>>;

#[derive(Default)]
pub(crate) struct SharedPages(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    cells: HashMap<(StepKey, u64), Cell>,
    /// Read pages, oldest first, with their text bytes.
    read: VecDeque<((StepKey, u64), Cell, usize)>,
    bytes: usize,
}

impl SharedPages {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cell(&self, at: (StepKey, u64)) -> Cell {
        self.kept().cells.entry(at).or_default().clone()
    }

    /// A page was read: keep it, and drop the oldest pages past the bounds.
    fn keep(&self, at: (StepKey, u64), cell: &Cell, page: &Page) {
        let bytes = page.iter().map(|l| l.line.text.len()).sum::<usize>();
        let mut kept = self.kept();
        kept.read.push_back((at, cell.clone(), bytes));
        kept.bytes += bytes;
        while (kept.bytes > KEPT_BYTES || kept.read.len() > KEPT_PAGES)
            && let Some((old, old_cell, old_bytes)) = kept.read.pop_front()
        {
            kept.bytes -= old_bytes;
            if kept
                .cells
                .get(&old)
                .is_some_and(|c| Arc::ptr_eq(c, &old_cell))
            {
                kept.cells.remove(&old);
            }
        }
    }

    /// The page is short of a line a viewer needs: the next viewer reads it again.
    fn forget(&self, at: (StepKey, u64), cell: &Cell) {
        let mut kept = self.kept();
        if kept.cells.get(&at).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            kept.cells.remove(&at);
        }
    }

    /// Stored lines of a step from `from` to the end of its page (empty when the store has no
    /// line `from`).
    pub(crate) async fn lines_from(
        &self,
        logs: &Logs,
        key: StepKey,
        from: u64,
    ) -> Result<Vec<Arc<SharedLine>>> {
        let from = from.max(1);
        let index = (from - 1) / PAGE_LINES;
        let first = index * PAGE_LINES + 1;
        let at = (key, index);
        let cell = self.cell(at);
        let page = cell
            .get_or_try_init(|| async {
                let lines = logs.read_lines(key, first, PAGE_LINES as usize).await?;
                let page: Page = lines.into_iter().map(SharedLine::new).collect();
                self.keep(at, &cell, &page);
                Ok::<_, crate::Error>(page)
            })
            .await?;
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        if let Some(lines) = page.get(skip..)
            && !lines.is_empty()
        {
            return Ok(lines.to_vec());
        }
        self.forget(at, &cell);
        let lines = logs.read_lines(key, from, FOLLOW_BATCH).await?;
        Ok(lines.into_iter().map(SharedLine::new).collect())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use gantry_core::{JobId, Stream};

    use super::*;

    fn logs() -> (tempfile::TempDir, Logs, StepKey) {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path().join("logs")).unwrap();
        (dir, logs, StepKey::new(JobId::new(), 1, 0))
    }

    fn append(logs: &Logs, key: StepKey, lines: std::ops::RangeInclusive<u64>) {
        for i in lines {
            logs.append_text(
                key,
                gantry_core::now(),
                Stream::Stdout,
                &format!("line {i}"),
            )
            .unwrap();
        }
    }

    fn numbers(lines: &[Arc<SharedLine>]) -> Vec<u64> {
        lines.iter().map(|l| l.line.number).collect()
    }

    #[tokio::test]
    async fn viewers_behind_the_ring_get_the_same_lines_read_once() {
        let (_dir, logs, key) = logs();
        // More than the ring keeps: line 1 is only in the store.
        append(&logs, key, 1..=6000);
        let mut a = Box::pin(logs.follow(key, 1, false));
        let mut b = Box::pin(logs.follow(key, 300, false));
        let from_a = a.next().await.unwrap().unwrap();
        let from_b = b.next().await.unwrap().unwrap();
        assert_eq!(numbers(&from_a), (1..=PAGE_LINES).collect::<Vec<_>>());
        assert_eq!(numbers(&from_b), (300..=PAGE_LINES).collect::<Vec<_>>());
        assert!(Arc::ptr_eq(&from_a[299], &from_b[0]), "line 300 read twice");
        assert_eq!(from_b[0].json(), from_a[299].json());
    }

    #[tokio::test]
    async fn a_page_read_while_the_log_grew_is_read_again_for_the_lines_past_it() {
        let (_dir, logs, key) = logs();
        append(&logs, key, 1..=10);
        let pages = &logs.0.pages;
        assert_eq!(
            numbers(&pages.lines_from(&logs, key, 1).await.unwrap()),
            (1..=10).collect::<Vec<_>>()
        );
        append(&logs, key, 11..=20);
        // Past the short page: read from the store, and the page is dropped...
        assert_eq!(
            numbers(&pages.lines_from(&logs, key, 11).await.unwrap()),
            (11..=20).collect::<Vec<_>>()
        );
        // ...so the next viewer gets it whole.
        assert_eq!(
            numbers(&pages.lines_from(&logs, key, 5).await.unwrap()),
            (5..=20).collect::<Vec<_>>()
        );
        // Past the end of the log: nothing.
        assert!(pages.lines_from(&logs, key, 21).await.unwrap().is_empty());
    }
}
