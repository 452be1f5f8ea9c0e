//! Live, per-step, coloured console output for `gantry run`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use gantry_core::{JobEvent, JobEventKind, State, Stream, Timestamp};
use gantry_pipeline::PlannedJob;
use owo_colors::{OwoColorize, Stream::Stdout};

use crate::walk::{FailedStep, JobResult, Observer};

/// Prints each step's output under a header naming the job and step, and a line for how each
/// step and job ended.
#[derive(Debug, Default)]
pub struct Console {
    step_started: HashMap<usize, Timestamp>,
}

impl Console {
    pub fn new() -> Self {
        Self::default()
    }
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let total = d.as_secs();
        format!("{}m{:02}s", total / 60, total % 60)
    }
}

fn state_mark(state: State) -> String {
    match state {
        State::Success => "✔".if_supports_color(Stdout, |s| s.green()).to_string(),
        State::Failure | State::Error => "✘".if_supports_color(Stdout, |s| s.red()).to_string(),
        State::Cancelled => "■".if_supports_color(Stdout, |s| s.yellow()).to_string(),
        _ => "○".if_supports_color(Stdout, |s| s.dimmed()).to_string(),
    }
}

impl Observer for Console {
    fn job_started(&mut self, job: &PlannedJob, attempt: u32) {
        let title = if attempt > 1 {
            format!("job {} (attempt {attempt})", job.name)
        } else {
            format!("job {}", job.name)
        };
        println!(
            "{}",
            format!("━━ {title}").if_supports_color(Stdout, |s| s.bold())
        );
        self.step_started.clear();
    }

    fn event(&mut self, job: &PlannedJob, event: &JobEvent) {
        let step_name = |i: usize| {
            job.spec
                .steps
                .get(i)
                .map_or_else(|| format!("step {}", i + 1), |s| s.name.clone())
        };
        let mut out = std::io::stdout().lock();
        match &event.kind {
            JobEventKind::Started => {}
            JobEventKind::StepStarted { step } => {
                self.step_started.insert(*step, event.at);
                let header = format!("▶ {}", step_name(*step));
                let _ = writeln!(out, "{}", header.if_supports_color(Stdout, |s| s.cyan()));
            }
            JobEventKind::Log(line) => {
                let bar = match line.stream {
                    Stream::Stdout => "│".if_supports_color(Stdout, |s| s.dimmed()).to_string(),
                    Stream::Stderr => "│".if_supports_color(Stdout, |s| s.yellow()).to_string(),
                    Stream::System => "!".if_supports_color(Stdout, |s| s.magenta()).to_string(),
                };
                let _ = writeln!(out, "  {bar} {}", line.text);
            }
            JobEventKind::StepFinished { step, outcome } => {
                let took = self
                    .step_started
                    .get(step)
                    .and_then(|start| (event.at - *start).to_std().ok())
                    .map(|d| format!("  {}", format_duration(d)))
                    .unwrap_or_default();
                let mut detail = String::new();
                if let Some(code) = outcome.exit_code.filter(|c| *c != 0) {
                    detail.push_str(&format!(" — exit code {code}"));
                }
                if let Some(reason) = &outcome.reason {
                    detail.push_str(&format!(" — {reason}"));
                }
                if outcome.state == State::Skipped {
                    detail.push_str(" (skipped)");
                }
                let _ = writeln!(
                    out,
                    "{} {}{detail}{}",
                    state_mark(outcome.state),
                    step_name(*step),
                    took.if_supports_color(Stdout, |s| s.dimmed())
                );
            }
            JobEventKind::Finished { .. } => {}
        }
    }

    fn job_finished(&mut self, job: &PlannedJob, result: &JobResult) {
        if result.attempts == 0 {
            let reason = result.reason.as_deref().unwrap_or("");
            println!(
                "{} job {} {}: {reason}",
                state_mark(result.state),
                job.name,
                result.state
            );
        }
    }
}

/// The closing table: one line per job, then the verdict.
pub fn summary(results: &[JobResult], took: Duration) -> String {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut out = String::from("\n");
    for r in results {
        // Each fact once: the failed step with its exit code or its own reason, then the
        // job's reason only when it says something else (a job timeout, a lost backend) — a
        // backend's reason for a failed step restates the step.
        let mut detail = match &r.failed_step {
            Some(FailedStep { name, outcome }) => match (&outcome.reason, outcome.exit_code) {
                (Some(why), _) => format!("step `{name}` failed: {why}"),
                (None, Some(code)) => format!("step `{name}` exited with {code}"),
                (None, None) => format!("step `{name}` failed"),
            },
            None => String::new(),
        };
        let restates = |reason: &String| {
            r.failed_step.as_ref().is_some_and(|s| {
                *reason == s.outcome.failure_reason(&s.name)
                    || Some(reason) == s.outcome.reason.as_ref()
            })
        };
        if let Some(reason) = r.reason.as_ref().filter(|r| !restates(r)) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(reason);
        }
        if r.allow_failure && r.state == State::Failure {
            detail.push_str(" (allowed to fail)");
        }
        if r.attempts > 1 {
            detail.push_str(&format!(" after {} attempts", r.attempts));
        }
        out.push_str(&format!(
            "{} {:width$}  {:9} {:>7}  {detail}\n",
            state_mark(r.state),
            r.name,
            r.state.to_string(),
            if r.attempts > 0 {
                format_duration(r.duration)
            } else {
                String::new()
            },
        ));
    }
    let verdict = match crate::walk::exit_code(results) {
        0 => format!(
            "{}",
            "run succeeded".if_supports_color(Stdout, |s| s.green())
        ),
        130 => format!(
            "{}",
            "run cancelled".if_supports_color(Stdout, |s| s.yellow())
        ),
        _ => format!("{}", "run failed".if_supports_color(Stdout, |s| s.red())),
    };
    out.push_str(&format!("{verdict} in {}\n", format_duration(took)));
    out
}
