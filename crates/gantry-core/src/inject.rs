//! Fault injection for the test suite, in the spirit of SQLite's I/O-error tests and
//! FoundationDB's `BUGGIFY`: the places where Gantry talks to a disk, a database, a forge or the
//! Kubernetes API ask [`fault`] before they do, and fail as that call could fail for real when
//! it answers.
//!
//! Nothing is injected unless the process was started with a plan ([`init`], from
//! `GANTRY_FAULTS`): then each call at a site is counted, and a call fails when the plan names
//! it (`SITE#N`: the N-th call at SITE, counting from 1) or, with `rate=P`, with probability P,
//! decided by hashing the seed, the site and the call's number — the same seed and the same
//! calls give the same faults. Without a plan [`fault`] is one atomic load.
//!
//! ```text
//! GANTRY_FAULTS="store.commit#3 logs.append#10"      # exactly those two calls fail
//! GANTRY_FAULTS="seed=42 rate=0.02 sites=store,forge" # 2% of the calls at store.* and forge.*
//! ```

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Every site that asks, with what fails there.
pub const SITES: &[(&str, &str)] = &[
    ("store.begin", "starting a write transaction: an I/O error"),
    (
        "store.commit",
        "committing a write transaction: an I/O error, the transaction rolled back",
    ),
    (
        "store.read",
        "getting a connection for a read: none in time",
    ),
    (
        "logs.append",
        "appending to a step log: half the record written, then EIO or ENOSPC",
    ),
    ("logs.sync", "syncing a step log: EIO"),
    (
        "forge.request",
        "a request to the forge API: a timeout, a reset connection, 500, 502 or 429",
    ),
    (
        "kube.request",
        "a request to the Kubernetes API: a timeout, 500 or 429; a watch closes at once",
    ),
];

/// A call that is to fail: where, which call it is there, and a number to pick how it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub site: &'static str,
    pub call: u64,
    pick: u64,
}

impl Fault {
    /// One of `choices`, the same one for the same fault.
    pub fn choose<'a, T>(&self, choices: &'a [T]) -> &'a T {
        &choices[(self.pick % choices.len() as u64) as usize]
    }

    /// The text an injected error carries, so a log or a reason shows where it came from.
    pub fn describe(&self, what: &str) -> String {
        format!(
            "{what} (fault injected at {} call {})",
            self.site, self.call
        )
    }
}

/// What `GANTRY_FAULTS` asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub seed: u64,
    /// The probability that a call at one of `sites` fails.
    pub rate: f64,
    /// Prefixes of the sites `rate` applies to; empty: every site.
    pub sites: Vec<String>,
    /// Calls that fail whatever the rate: (site, call number from 1).
    pub calls: Vec<(String, u64)>,
}

impl Plan {
    /// Parses `seed=N`, `rate=P`, `sites=A,B` and `SITE#N` items, separated by spaces. Names
    /// a site that does not exist, or a value that does not parse, as the error.
    pub fn parse(text: &str) -> Result<Plan, String> {
        let mut plan = Plan::default();
        let known = |site: &str| SITES.iter().any(|(s, _)| *s == site);
        for item in text.split_whitespace() {
            if let Some((site, n)) = item.split_once('#') {
                if !known(site) {
                    return Err(format!("{item:?}: no fault site {site:?} ({})", names()));
                }
                let n = n
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{item:?}: the call number must be 1 or more"))?;
                plan.calls.push((site.to_owned(), n));
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "{item:?}: expected seed=N, rate=P, sites=A,B or SITE#N"
                ));
            };
            match key {
                "seed" => {
                    plan.seed = value
                        .parse()
                        .map_err(|_| format!("{item:?}: the seed must be a whole number"))?;
                }
                "rate" => {
                    plan.rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| format!("{item:?}: the rate must be from 0 to 1"))?;
                }
                "sites" => {
                    for prefix in value.split(',').filter(|p| !p.is_empty()) {
                        if !SITES.iter().any(|(s, _)| s.starts_with(prefix)) {
                            return Err(format!(
                                "{item:?}: no fault site starts with {prefix:?} ({})",
                                names()
                            ));
                        }
                        plan.sites.push(prefix.to_owned());
                    }
                }
                _ => {
                    return Err(format!(
                        "{item:?}: expected seed=N, rate=P, sites=A,B or SITE#N"
                    ));
                }
            }
        }
        Ok(plan)
    }

    /// Whether the `call`-th call at `site` fails, and the number its kind is picked by.
    fn decide(&self, site: &str, call: u64) -> Option<u64> {
        let mut hasher = DefaultHasher::new();
        (self.seed, site, call).hash(&mut hasher);
        let hash = hasher.finish();
        let named = self.calls.iter().any(|(s, n)| s == site && *n == call);
        let in_scope =
            self.sites.is_empty() || self.sites.iter().any(|p| site.starts_with(p.as_str()));
        let drawn = in_scope && (hash >> 11) as f64 / (1u64 << 53) as f64 <= self.rate;
        (named || (self.rate > 0.0 && drawn)).then_some(hash.rotate_left(17))
    }
}

fn names() -> String {
    SITES.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
}

struct Active {
    plan: Plan,
    /// Per site: calls seen, faults injected.
    counts: Mutex<HashMap<&'static str, (u64, u64)>>,
}

static ACTIVE: OnceLock<Active> = OnceLock::new();
static ON: AtomicBool = AtomicBool::new(false);

/// Turns fault injection on for this process with `plan` (once; a second call is refused).
pub fn init(plan: Plan) -> Result<(), String> {
    ACTIVE
        .set(Active {
            plan,
            counts: Mutex::default(),
        })
        .map_err(|_| "fault injection is already set up".to_owned())?;
    ON.store(true, Ordering::Release);
    Ok(())
}

/// Asked by `site` before each call it makes: `Some` when this call is to fail.
pub fn fault(site: &'static str) -> Option<Fault> {
    if !ON.load(Ordering::Acquire) {
        return None;
    }
    let active = ACTIVE.get()?;
    let mut counts = active.counts.lock().unwrap_or_else(|e| e.into_inner());
    let entry = counts.entry(site).or_default();
    entry.0 += 1;
    let call = entry.0;
    let pick = active.plan.decide(site, call)?;
    entry.1 += 1;
    Some(Fault { site, call, pick })
}

/// The faults injected so far, by site (empty when injection is off).
pub fn injected() -> Vec<(&'static str, u64)> {
    let Some(active) = ACTIVE.get() else {
        return Vec::new();
    };
    let counts = active.counts.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<_> = counts.iter().map(|(site, (_, n))| (*site, *n)).collect();
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_say_what_is_wrong() {
        let plan = Plan::parse("seed=7 rate=0.5 sites=store,forge logs.append#3").unwrap();
        assert_eq!(plan.seed, 7);
        assert_eq!(plan.rate, 0.5);
        assert_eq!(plan.sites, ["store", "forge"]);
        assert_eq!(plan.calls, [("logs.append".to_owned(), 3)]);
        for (text, says) in [
            ("disk.write#1", "no fault site \"disk.write\""),
            ("store.begin#0", "1 or more"),
            ("rate=2", "from 0 to 1"),
            ("sites=nfs", "no fault site starts with \"nfs\""),
            ("seed=x", "whole number"),
            ("often", "expected seed=N"),
        ] {
            let err = Plan::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn a_named_call_fails_and_only_that_one() {
        let plan = Plan::parse("store.commit#3").unwrap();
        let failed: Vec<u64> = (1..=10)
            .filter(|n| plan.decide("store.commit", *n).is_some())
            .collect();
        assert_eq!(failed, [3]);
        assert!(plan.decide("store.begin", 3).is_none());
    }

    #[test]
    fn a_rate_fails_about_that_share_of_calls_the_same_way_for_the_same_seed() {
        let plan = Plan::parse("seed=11 rate=0.1 sites=logs").unwrap();
        let failed = |plan: &Plan| -> Vec<u64> {
            (1..=10_000)
                .filter(|n| plan.decide("logs.append", *n).is_some())
                .collect()
        };
        let first = failed(&plan);
        assert!((800..1200).contains(&first.len()), "{}", first.len());
        assert_eq!(first, failed(&plan), "the same seed, the same faults");
        let other = Plan {
            seed: 12,
            ..plan.clone()
        };
        assert_ne!(first, failed(&other));
        assert!(
            (1..=10_000).all(|n| plan.decide("store.begin", n).is_none()),
            "sites= limits where faults fall"
        );
    }
}
