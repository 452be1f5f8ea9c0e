//! The operator's job timeouts: the default a job without a `timeout` gets, and the most a
//! pipeline may ask for.

use std::fmt;
use std::time::Duration;

use gantry_core::JobSpec;

use crate::machine::humanize;

/// The timeout of a job whose pipeline sets none, as GitLab's default: long enough for most
/// builds, short enough that a hung job does not hold a slot for the rest of the day.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// The most a job or step may ask for unless the operator says otherwise.
pub const DEFAULT_MAX_JOB_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A job's (or a step's) timeout above the maximum: the pipeline is refused at planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutTooLong {
    pub job: String,
    /// The step that asks, when it is a step's timeout.
    pub step: Option<String>,
    pub asked: Duration,
    pub max: Duration,
}

impl fmt::Display for TimeoutTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (asked, max) = (humanize(self.asked), humanize(self.max));
        match &self.step {
            None => write!(f, "job {} asks for a timeout of {asked}", self.job)?,
            Some(step) => write!(
                f,
                "step {step:?} of job {} asks for a timeout of {asked}",
                self.job
            )?,
        }
        write!(f, ", more than this server's maximum of {max}")
    }
}

impl std::error::Error for TimeoutTooLong {}

/// The default and the maximum job timeout; `default <= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobTimeouts {
    default: Duration,
    max: Duration,
}

impl Default for JobTimeouts {
    fn default() -> Self {
        Self {
            default: DEFAULT_JOB_TIMEOUT,
            max: DEFAULT_MAX_JOB_TIMEOUT,
        }
    }
}

impl JobTimeouts {
    /// `Err` with the reason when the default is longer than the maximum.
    pub fn new(default: Duration, max: Duration) -> Result<Self, String> {
        if default > max {
            return Err(format!(
                "the default job timeout ({}) is longer than the maximum job timeout ({})",
                humanize(default),
                humanize(max)
            ));
        }
        Ok(Self { default, max })
    }

    /// Gives `spec` the default timeout when it has none; refuses a job or step timeout above
    /// the maximum.
    pub fn apply(&self, job: &str, spec: &mut JobSpec) -> Result<(), TimeoutTooLong> {
        let too_long = |step: Option<&str>, asked| TimeoutTooLong {
            job: job.to_owned(),
            step: step.map(str::to_owned),
            asked,
            max: self.max,
        };
        if let Some(asked) = spec.timeout
            && asked > self.max
        {
            return Err(too_long(None, asked));
        }
        for step in &spec.steps {
            if let Some(asked) = step.timeout
                && asked > self.max
            {
                return Err(too_long(Some(&step.name), asked));
            }
        }
        spec.timeout.get_or_insert(self.default);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gantry_core::{StatusCondition, StepKind, StepSpec};

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn spec(job: Option<Duration>, step: Option<Duration>) -> JobSpec {
        JobSpec {
            steps: vec![StepSpec {
                name: "unit".into(),
                kind: StepKind::Run {
                    script: "true".into(),
                },
                timeout: step,
                env: Default::default(),
                run_if: StatusCondition::Success,
                allow_failure: false,
            }],
            timeout: job,
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_job_without_a_timeout_gets_the_default_and_one_with_a_timeout_keeps_it() {
        let t = JobTimeouts::new(90 * MIN, 120 * MIN).unwrap();
        let mut none = spec(None, None);
        t.apply("build", &mut none).unwrap();
        assert_eq!(none.timeout, Some(90 * MIN));
        let mut own = spec(Some(20 * MIN), Some(5 * MIN));
        t.apply("build", &mut own).unwrap();
        assert_eq!(own.timeout, Some(20 * MIN));
        assert_eq!(own.steps[0].timeout, Some(5 * MIN));
        let mut at_max = spec(Some(120 * MIN), Some(120 * MIN));
        assert!(
            t.apply("build", &mut at_max).is_ok(),
            "the maximum itself is allowed"
        );
        let mut unset = spec(None, None);
        JobTimeouts::default().apply("build", &mut unset).unwrap();
        assert_eq!(unset.timeout, Some(DEFAULT_JOB_TIMEOUT));
    }

    #[test]
    fn a_job_or_step_timeout_above_the_maximum_is_refused_with_the_reason() {
        let t = JobTimeouts::default();
        let err = t
            .apply("build", &mut spec(Some(48 * 60 * MIN), None))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "job build asks for a timeout of 48h, more than this server's maximum of 24h"
        );
        let err = t
            .apply("test (os=linux)", &mut spec(None, Some(25 * 60 * MIN)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "step \"unit\" of job test (os=linux) asks for a timeout of 25h, more than this server's maximum of 24h"
        );
    }

    #[test]
    fn a_default_longer_than_the_maximum_is_refused() {
        let err = JobTimeouts::new(2 * 60 * MIN, 90 * MIN).unwrap_err();
        assert_eq!(
            err,
            "the default job timeout (2h) is longer than the maximum job timeout (90m)"
        );
    }
}
