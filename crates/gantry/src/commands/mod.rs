pub mod config_reference;
pub mod lint;
pub mod render;
pub mod run;
pub mod schema;
pub mod serve;
pub mod serve_config;
pub mod serve_credentials;

use std::path::{Path, PathBuf};

/// Pipeline files of a repository, where Gantry looks for them: `.gantry.yaml` (or `.yml`) and
/// every `.yaml`/`.yml` file directly in `.gantry/`, sorted.
pub fn discover_pipelines(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = [".gantry.yaml", ".gantry.yml"]
        .iter()
        .map(|name| root.join(name))
        .filter(|path| path.is_file())
        .collect();
    if let Ok(entries) = std::fs::read_dir(root.join(".gantry")) {
        let mut in_dir: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_file() && is_yaml(path))
            .collect();
        in_dir.sort();
        found.extend(in_dir);
    }
    found
}

/// Prints a pipeline diagnostic to stderr as `gantry lint` shows it: the line of `source` with a
/// caret under the place, and the hint; in colour as the rest of the output is (`--color`,
/// `NO_COLOR`, a terminal or not).
pub fn show_diagnostic(d: &gantry_pipeline::Diagnostic, source: &str) {
    use owo_colors::{OwoColorize, Stream::Stderr};
    let styled = !""
        .if_supports_color(Stderr, |t| t.red())
        .to_string()
        .is_empty();
    eprintln!("{}\n", d.render(source, styled));
}

pub fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// A path as the user should see it in messages: relative to `base` when it is inside it.
pub fn display_path(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}
