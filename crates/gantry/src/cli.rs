use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::commands;

/// Gantry: a container-native CI runner for Kubernetes.
///
/// Every flag can also be set with the environment variable shown next to it.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, env = "GANTRY_COLOR")]
    pub color: ColorChoice,
    /// Diagnostic log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, default_value = "warn", env = "GANTRY_LOG")]
    pub log: String,
    /// Diagnostic log format: `text` for people, `json` (one object a line, with the current
    /// span's fields such as run, job and delivery ids) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GANTRY_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline of the current git repository here, as local processes.
    Run(commands::run::RunArgs),
    /// Check pipeline files without running them.
    Lint(commands::lint::LintArgs),
    /// Print the JSON Schema of the pipeline language (for editors).
    Schema,
    /// Print the Pods the Kubernetes backend would create for a pipeline file (no cluster).
    Render(commands::render::RenderArgs),
    /// Serve webhooks and the API, and run what they trigger.
    Serve(Box<commands::serve::ServeArgs>),
    /// Print the configuration reference (flags, environment variables, file keys) as
    /// Markdown: docs/configuration.md.
    #[command(hide = true)]
    ConfigReference,
}

impl Cli {
    /// Parses the command line and runs it; the exit code says how it went.
    pub fn parse_and_run() -> ExitCode {
        let cli = Cli::parse();
        init_tracing(&cli.global.log, cli.global.log_format);
        match cli.global.color {
            ColorChoice::Auto => {}
            ColorChoice::Always => owo_colors::set_override(true),
            ColorChoice::Never => owo_colors::set_override(false),
        }
        let result = match cli.command {
            Command::Run(args) => runtime().and_then(|rt| rt.block_on(commands::run::run(args))),
            Command::Lint(args) => commands::lint::lint(args),
            Command::Schema => commands::schema::schema(),
            Command::Render(args) => commands::render::render(args),
            Command::Serve(args) => {
                runtime().and_then(|rt| rt.block_on(commands::serve::serve(*args)))
            }
            Command::ConfigReference => {
                print!("{}", commands::config_reference::markdown(&Cli::command()));
                Ok(ExitCode::SUCCESS)
            }
        };
        match result {
            Ok(code) => code,
            Err(err) => {
                eprintln!("gantry: error: {err:#}");
                ExitCode::from(2)
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if arg.is_positional() || builtin {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert!(
                    env.as_deref().is_some_and(|e| e.starts_with("GANTRY_")),
                    "{path} --{} has no GANTRY_* environment variable",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "gantry");
    }
}
