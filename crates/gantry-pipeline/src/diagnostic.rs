//! What the pipeline language tells a user about a file: errors and warnings with a position.

use std::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The pipeline cannot run.
    Error,
    /// The pipeline runs, but probably not as its author meant.
    Warning,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
        }
    }
}

/// One message about one place in a pipeline file.
///
/// Displays on one line as `{file}:{line}:{column}: error: {message}` (and `(help: …)` when
/// there is a hint); line and column are 1-based and count characters, like editors do.
/// [`Diagnostic::render`] shows it the way rustc does: the source line with a caret under the
/// place, and the hint below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: Level,
    pub message: String,
    /// What probably went wrong and how to fix it, when a likely mistake is recognised.
    pub help: Option<String>,
}

impl Diagnostic {
    pub(crate) fn error(
        file: &str,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            line: line.max(1),
            column: column.max(1),
            severity: Level::Error,
            message: message.into(),
            help: None,
        }
    }

    pub(crate) fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    pub(crate) fn warning(
        file: &str,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Level::Warning,
            ..Self::error(file, line, column, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Level::Error
    }

    /// The diagnostic over the line of `source` it is about, with a caret under the place (the
    /// word there underlined), and its hint: what `gantry lint` prints. `styled` adds colours.
    pub fn render(&self, source: &str, styled: bool) -> String {
        use annotate_snippets::{AnnotationKind, Renderer, Snippet};
        let level = match self.severity {
            Level::Error => annotate_snippets::Level::ERROR,
            Level::Warning => annotate_snippets::Level::WARNING,
        };
        let renderer = if styled {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let Some(text) = source.lines().nth(self.line.saturating_sub(1)) else {
            // A position past the end (an empty file): the one-line form says it all.
            return self.to_string();
        };
        let start = text
            .char_indices()
            .nth(self.column.saturating_sub(1))
            .map_or(text.len(), |(i, _)| i);
        let word = text[start..]
            .find(|c: char| !(c.is_alphanumeric() || "_-./$".contains(c)))
            .unwrap_or(text.len() - start);
        let end = if word == 0 {
            text[start..]
                .chars()
                .next()
                .map_or(start, |c| start + c.len_utf8())
        } else {
            start + word
        };
        let mut group = level.primary_title(self.message.as_str()).element(
            Snippet::source(text)
                .line_start(self.line)
                .path(self.file.as_str())
                .annotation(AnnotationKind::Primary.span(start..end)),
        );
        if let Some(help) = &self.help {
            group = group.element(annotate_snippets::Level::HELP.message(help.as_str()));
        }
        renderer.render(&[group])
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file,
            self.line,
            self.column,
            self.severity.as_str(),
            self.message
        )?;
        match &self.help {
            Some(help) => write!(f, " (help: {help})"),
            None => Ok(()),
        }
    }
}

/// The diagnostics of a file that failed to parse (at least one is an error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
