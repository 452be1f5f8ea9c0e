//! The Helm chart speaks the binary's language: every `GANTRY_*` variable the chart sets, with
//! every value set CI checks, is one `gantry serve` reads (as the generated configuration
//! reference lists them), so a renamed flag cannot leave the chart setting a variable nobody
//! reads.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::workspace;

fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("GANTRY_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        found.insert(tail[..end].trim_end_matches('_').to_owned());
        rest = &tail[end..];
    }
    found
}

#[test]
fn every_variable_the_chart_sets_is_one_gantry_reads() {
    let root = workspace();
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let known = variables(&reference);
    let mut sets = vec![None];
    for entry in std::fs::read_dir(root.join("charts/gantry/ci")).unwrap() {
        sets.push(Some(entry.unwrap().path()));
    }
    let mut checked = 0;
    for values in sets {
        let mut cmd = Command::new(root.join("tests/cluster/helm"));
        cmd.args(["template", "gantry"])
            .arg(root.join("charts/gantry"));
        if let Some(v) = &values {
            cmd.arg("-f").arg(v);
        }
        let out = cmd
            .output()
            .expect("run tests/cluster/helm (it installs helm on first use)");
        assert!(
            out.status.success(),
            "helm template with {values:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        for name in variables(&rendered) {
            // Secret values for local jobs are named by the operator.
            if name.starts_with("GANTRY_SECRET") {
                continue;
            }
            assert!(
                known.contains(&name),
                "the chart (values {values:?}) sets {name}, which is not in docs/configuration.md: \
                 no flag of gantry serve reads it"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} variables found: is the chart rendered?"
    );
}
