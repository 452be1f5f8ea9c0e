//! Deciding from a trigger: `on` (does the pipeline run?) and `when` (does a job or step run?).

use gantry_core::{Event, StatusCondition, Trigger};
use globset::{GlobBuilder, GlobMatcher};

/// Compiled glob patterns; a value matches when any pattern does.
#[derive(Clone, Debug)]
pub(crate) struct Globs {
    pub matchers: Vec<GlobMatcher>,
}

impl Globs {
    pub fn matches(&self, value: &str) -> bool {
        self.matchers.iter().any(|m| m.is_match(value))
    }
}

/// `*` does not cross `/`; `**` does.
pub(crate) fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("empty glob pattern".into());
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid glob `{pattern}`: {}", e.kind()))
}

/// Path filters. Unknown changes (`None`) match.
#[derive(Clone, Debug, Default)]
pub(crate) struct PathFilter {
    pub paths: Option<Globs>,
    pub ignore: Option<Globs>,
}

impl PathFilter {
    pub fn admits(&self, changed: Option<&[String]>) -> bool {
        let Some(changed) = changed else { return true };
        if self.paths.is_none() && self.ignore.is_none() {
            return true;
        }
        changed.iter().any(|p| {
            self.paths.as_ref().is_none_or(|g| g.matches(p))
                && !self.ignore.as_ref().is_some_and(|g| g.matches(p))
        })
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct PushRule {
    pub branches: Option<Globs>,
    pub tags: Option<Globs>,
    pub paths: PathFilter,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct PullRequestRule {
    pub branches: Option<Globs>,
    pub paths: PathFilter,
}

/// What `on` compiles to.
#[derive(Clone, Debug)]
pub(crate) struct Triggers {
    pub push: Option<PushRule>,
    pub pull_request: Option<PullRequestRule>,
    /// `Some(None)`: any tag.
    pub tag: Option<Option<Globs>>,
    pub manual: bool,
}

impl Default for Triggers {
    /// No `on`: a push to any branch, and manual runs.
    fn default() -> Self {
        Self {
            push: Some(PushRule::default()),
            pull_request: None,
            tag: None,
            manual: true,
        }
    }
}

/// A tag push, however the forge reported it.
fn pushed_tag(trigger: &Trigger) -> Option<&str> {
    match trigger.event {
        Event::Tag => trigger.tag.as_deref().or(Some("")),
        Event::Push if trigger.branch.is_none() => trigger.tag.as_deref(),
        _ => None,
    }
}

impl Triggers {
    pub fn admits(&self, trigger: &Trigger) -> bool {
        if let Some(tag) = pushed_tag(trigger) {
            let by_tag_rule = self
                .tag
                .as_ref()
                .is_some_and(|globs| globs.as_ref().is_none_or(|g| g.matches(tag)));
            let by_push_rule = self
                .push
                .as_ref()
                .and_then(|p| p.tags.as_ref())
                .is_some_and(|g| g.matches(tag));
            return by_tag_rule || by_push_rule;
        }
        match trigger.event {
            Event::Manual => self.manual,
            Event::Push => self.push.as_ref().is_some_and(|rule| {
                let branch_ok = match (&rule.branches, &rule.tags) {
                    (Some(b), _) => trigger.branch.as_deref().is_some_and(|br| b.matches(br)),
                    (None, Some(_)) => false,
                    (None, None) => true,
                };
                branch_ok && rule.paths.admits(trigger.changed_paths.as_deref())
            }),
            Event::PullRequest => self.pull_request.as_ref().is_some_and(|rule| {
                let base = trigger.pull_request.as_ref().map(|pr| pr.base_ref.as_str());
                let base_ok = rule
                    .branches
                    .as_ref()
                    .is_none_or(|g| base.is_some_and(|b| g.matches(b)));
                base_ok && rule.paths.admits(trigger.changed_paths.as_deref())
            }),
            Event::Tag => false,
        }
    }
}

/// What `when` compiles to.
#[derive(Clone, Debug, Default)]
pub(crate) struct WhenRule {
    pub branch: Option<Globs>,
    pub tag: Option<Globs>,
    pub events: Option<Vec<Event>>,
    pub paths: Option<Globs>,
    pub status: StatusCondition,
}

impl WhenRule {
    /// Why the trigger leaves the job or step out, or `None` when it runs.
    pub fn excludes(&self, trigger: &Trigger) -> Option<String> {
        if let Some(events) = &self.events
            && !events.contains(&trigger.event)
        {
            let list: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
            return Some(format!(
                "`when.event` is {}, the event is {}",
                list.join(", "),
                trigger.event
            ));
        }
        if let Some(globs) = &self.branch {
            match trigger.branch.as_deref() {
                Some(b) if globs.matches(b) => {}
                Some(b) => return Some(format!("`when.branch` does not match branch `{b}`")),
                None => return Some("`when.branch` is set and no branch was built".into()),
            }
        }
        if let Some(globs) = &self.tag {
            match trigger.tag.as_deref() {
                Some(t) if globs.matches(t) => {}
                Some(t) => return Some(format!("`when.tag` does not match tag `{t}`")),
                None => return Some("`when.tag` is set and no tag was built".into()),
            }
        }
        if let Some(globs) = &self.paths {
            let filter = PathFilter {
                paths: Some(globs.clone()),
                ignore: None,
            };
            if !filter.admits(trigger.changed_paths.as_deref()) {
                return Some("`when.paths` matches none of the changed files".into());
            }
        }
        None
    }
}
