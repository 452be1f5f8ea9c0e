//! docs/pipeline.md, written by hand, keeps up with the language: its table of variables lists
//! every built-in.

use std::path::Path;

#[test]
fn the_variables_table_lists_every_built_in() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/pipeline.md"),
    )
    .expect("docs/pipeline.md");
    for (name, _) in gantry_pipeline::VARIABLES {
        assert!(
            doc.lines().any(|l| l.starts_with(&format!("| `{name}` |"))),
            "docs/pipeline.md (## Variables) has no row for the built-in `{name}`"
        );
    }
}
