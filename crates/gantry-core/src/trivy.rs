//! How a `trivy` step scans, on every backend: one scan into a JSON report, then the gate and
//! the table from that report (`trivy convert`), and a summary for the step.
//!
//! Trivy exits 1 on its own errors (a vulnerability database it cannot fetch, a broken cache,
//! an image it cannot pull) as well as, with `--exit-code 1`, on findings: a scanner error
//! would then read as "vulnerabilities found". Here the scan itself never exits non-zero for
//! findings, so a failed scan is a scanner error; the gate exits [`FINDINGS_EXIT_CODE`], which
//! is the findings and nothing else.

use crate::TrivyStep;

/// The exit code of a `trivy` step whose image has findings at the gated severities.
pub const FINDINGS_EXIT_CODE: i32 = 3;

/// The first line of a scan's summary, as the script writes it (`TEMPLATE`).
const SUMMARY_TAG: &str = "gantry:trivy";
/// What the script writes when the scan itself failed: `gantry:trivy-error=<exit code>`.
const ERROR_TAG: &str = "gantry:trivy-error=";
/// Findings listed in a step's summary (the counts cover all of them).
const TOP_FINDINGS: usize = 5;

/// The step's script (POSIX `sh`, `-e` safe). Its inputs are environment variables
/// ([`env`]); the summary goes to `$GANTRY_TRIVY_SUMMARY` (the termination message on
/// Kubernetes, a file on the local backend).
pub const SCRIPT: &str = r#"report=${GANTRY_TRIVY_REPORT:-/tmp/gantry-trivy.json}
out=${GANTRY_TRIVY_SUMMARY:-/dev/termination-log}
set -- image --format json --output "$report" --scanners vuln --no-progress
if [ -n "${GANTRY_TRIVY_DB_REPOSITORY:-}" ]; then set -- "$@" --db-repository "$GANTRY_TRIVY_DB_REPOSITORY"; fi
if [ -n "${GANTRY_TRIVY_IGNORE_UNFIXED:-}" ]; then set -- "$@" --ignore-unfixed; fi
rc=0
trivy "$@" "$GANTRY_TRIVY_IMAGE" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "gantry:trivy-error=$rc" > "$out"
  echo "trivy: the scan of $GANTRY_TRIVY_IMAGE failed (exit code $rc) before it could report anything: this is a scanner error, not a finding" >&2
  exit "$rc"
fi
set -- convert --format table --exit-code 3
if [ -n "${GANTRY_TRIVY_SEVERITY:-}" ]; then set -- "$@" --severity "$GANTRY_TRIVY_SEVERITY"; fi
gate=0
trivy "$@" "$report" || gate=$?
trivy convert --format template --template "$GANTRY_TRIVY_TEMPLATE" --output "$out" "$report" || true
exit "$gate"
"#;

/// The summary template: the counts by severity over every finding, then one line per
/// finding, most severe first (the kubelet keeps the first 4 KiB of a termination message).
pub const TEMPLATE: &str = concat!(
    r#"{{- $results := . -}}"#,
    r#"{{- $c := dict "CRITICAL" 0 "HIGH" 0 "MEDIUM" 0 "LOW" 0 "UNKNOWN" 0 -}}"#,
    r#"{{- range . }}{{ range .Vulnerabilities }}{{ $_ := set $c .Severity (add1 (get $c .Severity)) }}{{ end }}{{ end -}}"#,
    r#"gantry:trivy CRITICAL={{ get $c "CRITICAL" }} HIGH={{ get $c "HIGH" }} MEDIUM={{ get $c "MEDIUM" }} LOW={{ get $c "LOW" }} UNKNOWN={{ get $c "UNKNOWN" }}"#,
    "\n",
    r#"{{ range $s := list "CRITICAL" "HIGH" "MEDIUM" "LOW" "UNKNOWN" }}{{ range $results }}{{ range .Vulnerabilities }}{{ if eq .Severity $s }}"#,
    "{{ .Severity }}\t{{ .VulnerabilityID }}\t{{ .PkgName }}\t{{ .InstalledVersion }}\t{{ .FixedVersion }}\n",
    r#"{{ end }}{{ end }}{{ end }}{{ end -}}"#,
);

/// The environment of a step's script. `db_repository` is where Trivy fetches its
/// vulnerability database from (an OCI repository; `None`: Trivy's default, on the internet).
pub fn env(step: &TrivyStep, db_repository: Option<&str>) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("GANTRY_TRIVY_IMAGE", step.image.clone()),
        ("GANTRY_TRIVY_TEMPLATE", TEMPLATE.to_owned()),
        ("TRIVY_NO_PROGRESS", "true".to_owned()),
        ("TRIVY_DISABLE_TELEMETRY", "true".to_owned()),
        ("TRIVY_SKIP_VERSION_CHECK", "true".to_owned()),
    ];
    if !step.severity.is_empty() {
        let severities: Vec<&str> = step.severity.iter().map(|s| s.as_str()).collect();
        vars.push(("GANTRY_TRIVY_SEVERITY", severities.join(",")));
    }
    if step.ignore_unfixed {
        vars.push(("GANTRY_TRIVY_IGNORE_UNFIXED", "true".to_owned()));
    }
    if let Some(repo) = db_repository.filter(|r| !r.is_empty()) {
        vars.push(("GANTRY_TRIVY_DB_REPOSITORY", repo.to_owned()));
    }
    vars
}

/// What a finished `trivy` step reports: why it failed (if it did) and its summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Option<String>,
    pub summary: Option<String>,
}

/// The verdict of a `trivy` step from its exit code and what the script wrote
/// (`$GANTRY_TRIVY_SUMMARY`).
pub fn verdict(step: &TrivyStep, exit_code: i32, written: &str) -> Verdict {
    let summary = summarize(written);
    if let Some(code) = written
        .lines()
        .find_map(|l| l.trim().strip_prefix(ERROR_TAG))
    {
        return Verdict {
            reason: Some(format!(
                "trivy itself failed (exit code {}) before it reported anything: a scanner error (database, cache or registry), not a finding; see the log",
                code.trim()
            )),
            summary: None,
        };
    }
    let reason = match exit_code {
        0 => None,
        FINDINGS_EXIT_CODE => Some(format!(
            "vulnerabilities found at {}{}",
            gated(step),
            if step.ignore_unfixed {
                " (unfixed ones ignored)"
            } else {
                ""
            }
        )),
        code => Some(format!(
            "trivy failed with exit code {code}: a scanner error, not a finding; see the log"
        )),
    };
    Verdict { reason, summary }
}

/// Puts a `trivy` step's verdict on its outcome: the summary, and the reason of a failure that
/// has none yet (a timeout or an OOM kill keeps its own). Both backends end their trivy steps so.
pub fn report(step: &TrivyStep, written: &str, outcome: &mut crate::StepOutcome) {
    let verdict = verdict(step, outcome.exit_code.unwrap_or(0), written);
    if outcome.state == crate::State::Failure && outcome.reason.is_none() {
        outcome.reason = verdict.reason;
    }
    outcome.summary = verdict.summary;
}

fn gated(step: &TrivyStep) -> String {
    if step.severity.is_empty() {
        return "any severity".to_owned();
    }
    let mut severities = step.severity.clone();
    severities.sort_by(|a, b| b.cmp(a));
    severities.dedup();
    let names: Vec<&str> = severities.iter().map(|s| s.as_str()).collect();
    names.join(", ")
}

/// "1 CRITICAL, 2 HIGH" (or "no vulnerabilities"), then the most severe findings, one a line:
/// `CRITICAL CVE-… in zlib 1.2 (fixed in 1.3)`. `None` when `written` holds no summary.
pub fn summarize(written: &str) -> Option<String> {
    let mut lines = written.lines();
    let counts = lines
        .by_ref()
        .find_map(|l| l.trim().strip_prefix(SUMMARY_TAG))?;
    let mut total = 0u64;
    let mut parts = Vec::new();
    for pair in counts.split_whitespace() {
        let (severity, n) = pair.split_once('=')?;
        let n: u64 = n.parse().ok()?;
        total += n;
        if n > 0 {
            parts.push(format!("{n} {severity}"));
        }
    }
    let mut out = if total == 0 {
        "no vulnerabilities".to_owned()
    } else {
        parts.join(", ")
    };
    let findings: Vec<String> = lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [severity, id, package, installed, fixed] = f[..] else {
                return None;
            };
            let fix = if fixed.trim().is_empty() {
                "no fix yet".to_owned()
            } else {
                format!("fixed in {}", fixed.trim())
            };
            Some(format!("{severity} {id} in {package} {installed} ({fix})"))
        })
        .collect();
    for f in findings.iter().take(TOP_FINDINGS) {
        out.push('\n');
        out.push_str(f);
    }
    if findings.len() > TOP_FINDINGS {
        out.push_str(&format!(
            "\n… and {} more",
            total.saturating_sub(TOP_FINDINGS as u64)
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    #[test]
    fn the_gate_exits_with_the_findings_code() {
        assert!(SCRIPT.contains(&format!("--exit-code {FINDINGS_EXIT_CODE}\n")));
    }

    fn step(severity: &[Severity], ignore_unfixed: bool) -> TrivyStep {
        TrivyStep {
            image: "r/app:1".into(),
            severity: severity.to_vec(),
            ignore_unfixed,
            registry_secret: None,
        }
    }

    const WRITTEN: &str = "gantry:trivy CRITICAL=0 HIGH=1 MEDIUM=2 LOW=0 UNKNOWN=0\n\
        HIGH\tCVE-2099-0001\tzlib\t1.2.13\t1.3\n\
        MEDIUM\tCVE-2099-0002\tbusybox\t1.35\t\n\
        MEDIUM\tCVE-2099-0003\tbusybox\t1.35\t1.36\n";

    #[test]
    fn findings_read_as_findings_and_errors_as_errors() {
        let gate = step(&[Severity::High, Severity::Critical], true);
        let found = verdict(&gate, FINDINGS_EXIT_CODE, WRITTEN);
        assert_eq!(
            found.reason.as_deref(),
            Some("vulnerabilities found at CRITICAL, HIGH (unfixed ones ignored)")
        );
        assert_eq!(
            found.summary.as_deref(),
            Some(
                "1 HIGH, 2 MEDIUM\nHIGH CVE-2099-0001 in zlib 1.2.13 (fixed in 1.3)\n\
                 MEDIUM CVE-2099-0002 in busybox 1.35 (no fix yet)\n\
                 MEDIUM CVE-2099-0003 in busybox 1.35 (fixed in 1.36)"
            )
        );
        let broken = verdict(&gate, 1, "gantry:trivy-error=1\n");
        assert!(
            broken.reason.as_deref().unwrap().contains("scanner error"),
            "{broken:?}"
        );
        assert_eq!(broken.summary, None);
        // Exit 1 without the script's word (the script never ran: no shell, no trivy).
        let odd = verdict(&gate, 127, "");
        assert!(odd.reason.unwrap().contains("exit code 127"));
        let pass = verdict(&step(&[Severity::Critical], false), 0, WRITTEN);
        assert_eq!(pass.reason, None);
        assert!(pass.summary.unwrap().starts_with("1 HIGH, 2 MEDIUM\n"));
    }

    #[test]
    fn a_clean_image_says_so_and_long_lists_are_cut() {
        assert_eq!(
            summarize("gantry:trivy CRITICAL=0 HIGH=0 MEDIUM=0 LOW=0 UNKNOWN=0\n").as_deref(),
            Some("no vulnerabilities")
        );
        let mut many = String::from("gantry:trivy CRITICAL=9 HIGH=0 MEDIUM=0 LOW=0 UNKNOWN=0\n");
        for i in 0..9 {
            many.push_str(&format!("CRITICAL\tCVE-{i}\tp\t1\t2\n"));
        }
        let s = summarize(&many).unwrap();
        assert_eq!(s.lines().count(), 1 + TOP_FINDINGS + 1, "{s}");
        assert!(s.ends_with("… and 4 more"), "{s}");
        assert_eq!(summarize("nothing here"), None);
        assert_eq!(summarize("gantry:trivy HIGH=x"), None);
    }

    #[test]
    fn the_environment_carries_the_gate() {
        let vars = env(
            &step(&[Severity::Critical, Severity::High], true),
            Some("reg/trivy-db:2"),
        );
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GANTRY_TRIVY_SEVERITY"), Some("CRITICAL,HIGH"));
        assert_eq!(get("GANTRY_TRIVY_IGNORE_UNFIXED"), Some("true"));
        assert_eq!(get("GANTRY_TRIVY_DB_REPOSITORY"), Some("reg/trivy-db:2"));
        assert_eq!(get("GANTRY_TRIVY_IMAGE"), Some("r/app:1"));
        let plain = env(&step(&[], false), None);
        assert!(plain.iter().all(|(k, _)| *k != "GANTRY_TRIVY_SEVERITY"));
    }
}
