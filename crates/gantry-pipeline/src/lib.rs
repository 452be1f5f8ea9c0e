//! Gantry's pipeline language: a YAML file in the application's repository that says which
//! events start a run and which jobs it has. This crate turns the text into a validated
//! [`Pipeline`] (with `file:line:column` diagnostics that say what was expected) and a pipeline
//! plus a trigger into a [`Plan`]: concrete jobs in dependency order, matrices expanded,
//! variables interpolated, `when` rules applied. It also generates the language's JSON Schema.
//!
//! Pure: no I/O, no async. No input makes it panic or run long: the YAML parser runs with
//! budgets (events, nodes, depth, aliases), files are at most 1 MiB, matrices are capped.
//!
//! The language is documented in `docs/pipeline.md`.

mod diagnostic;
mod model;
mod plan;
mod rules;
mod schema;
mod spanned;
mod suggest;
mod validate;
mod values;
mod vars;
mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Level};
pub use plan::{Plan, PlanContext, PlannedJob, plan};
pub use schema::json_schema;
pub use validate::{MAX_JOBS, MAX_MATRIX_JOBS, Pipeline};
pub use values::parse_duration;
pub use vars::VARIABLES;

/// Parses and validates a pipeline file. `file` names it in diagnostics and gives the default
/// pipeline name. `Err` holds every diagnostic (warnings too) when there is at least one error.
pub fn parse(file: &str, source: &str) -> Result<Pipeline, Diagnostics> {
    let raw = yaml::load(file, source).map_err(Diagnostics)?;
    match validate::validate(file, source, raw) {
        (Some(pipeline), _) => Ok(pipeline),
        (None, diags) => Err(Diagnostics(diags)),
    }
}

/// Every error and warning about a pipeline file, in file order; empty when it is clean.
pub fn lint(file: &str, source: &str) -> Vec<Diagnostic> {
    let mut diags = match yaml::load(file, source) {
        Err(diags) => diags,
        Ok(raw) => validate::validate(file, source, raw).1,
    };
    diags.sort_by_key(|d| (d.line, d.column));
    diags
}
