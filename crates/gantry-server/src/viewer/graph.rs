//! The jobs of a run as a graph of their `needs`, drawn as SVG on the server: columns by
//! depth, a curve from each need to the job that waits for it.

use std::collections::HashMap;
use std::fmt::Write as _;

use gantry_core::Job;

use super::html::esc;

const W: usize = 190;
const H: usize = 52;
const GAP_X: usize = 56;
const GAP_Y: usize = 18;

/// `jobs`: the latest attempt of each job, in plan order.
pub fn svg(run: &str, jobs: &[&Job]) -> String {
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    // Depth = the longest chain of needs before a job (the plan has no cycles; the guard keeps
    // a damaged record from looping).
    let mut depth = vec![0usize; jobs.len()];
    for _ in 0..jobs.len() {
        let mut changed = false;
        for (i, job) in jobs.iter().enumerate() {
            for need in &job.needs {
                if let Some(&n) = index.get(need.as_str())
                    && depth[i] < depth[n] + 1
                {
                    depth[i] = depth[n] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows = HashMap::new();
    let mut pos = vec![(0usize, 0usize); jobs.len()];
    for (i, d) in depth.iter().enumerate() {
        let row = rows.entry(*d).or_insert(0usize);
        pos[i] = (d * (W + GAP_X), *row * (H + GAP_Y));
        *row += 1;
    }
    let width = (depth.iter().max().copied().unwrap_or(0) + 1) * (W + GAP_X) - GAP_X + 2;
    let height = rows.values().max().copied().unwrap_or(1) * (H + GAP_Y) - GAP_Y + 2;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="graph" role="img" aria-label="jobs and what they need" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
    );
    for (i, job) in jobs.iter().enumerate() {
        for need in &job.needs {
            if let Some(&n) = index.get(need.as_str()) {
                let (x1, y1) = (pos[n].0 + W + 1, pos[n].1 + H / 2 + 1);
                let (x2, y2) = (pos[i].0 + 1, pos[i].1 + H / 2 + 1);
                let mid = (x1 + x2) / 2;
                let _ = write!(
                    out,
                    r#"<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"/>"#
                );
            }
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        let (x, y) = (pos[i].0 + 1, pos[i].1 + 1);
        let mut name: String = job.name.chars().take(22).collect();
        if job.name.chars().count() > 22 {
            name.push('…');
        }
        let _ = write!(
            out,
            r#"<a href="/runs/{run}/jobs/{id}" class="node s-{state}" data-status-of="{id}"><title>{full}</title><rect x="{x}" y="{y}" width="{W}" height="{H}" rx="8"/><text x="{tx}" y="{ty1}" class="name">{name}</text><text x="{tx}" y="{ty2}" class="state">{state}{attempt}</text></a>"#,
            id = job.id,
            state = job.state.as_str(),
            full = esc(&job.name),
            name = esc(&name),
            tx = x + 12,
            ty1 = y + 21,
            ty2 = y + 40,
            attempt = if job.attempt > 1 {
                format!(" · attempt {}", job.attempt)
            } else {
                String::new()
            },
        );
    }
    out.push_str("</svg>");
    out
}
