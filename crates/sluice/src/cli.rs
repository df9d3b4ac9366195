//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Sluice: a data plane that moves records from a source to destinations.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) or a full filter such as `sluice=debug`;
    /// `RUST_LOG`, when set, takes precedence.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every pipeline with `status: running` in a pipeline file until its sources end or it
    /// is stopped (Ctrl-C or SIGTERM stop gracefully; a second Ctrl-C stops at once).
    /// Exits 0 when every pipeline ended cleanly, 1 on errors, 130 after a hard stop.
    ///
    /// Relative paths in connector settings resolve against the current directory.
    Run(RunArgs),
    /// Check a pipeline file: syntax, structure and every connector's settings against its
    /// specification. Prints every problem; exits 1 if there is any.
    Validate(ValidateArgs),
    /// Describe the built-in connectors.
    Connectors {
        /// What to show.
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
}

/// Arguments of `sluice run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (Conduit's pipeline configuration format, version 2.2).
    #[arg(value_name = "PIPELINE.yaml")]
    pub file: PathBuf,

    /// Where Sluice keeps its state (`state.redb`: checkpoints and connector settings).
    /// Defaults to the platform's data directory + `/sluice`.
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `sluice validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    #[arg(value_name = "PIPELINE.yaml")]
    pub file: PathBuf,
}

/// `sluice connectors ...`.
#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// List the built-in connectors: name, version, sides and summary.
    List,
    /// Show a connector's full specification: description and every parameter.
    Spec {
        /// The connector (`file`, `builtin:file` or `builtin:file@v0.1.0`).
        name: String,
        /// Print the specification as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_subcommand() {
        let cli =
            Cli::try_parse_from(["sluice", "run", "p.yaml", "--data-dir", "/d"]).expect("run");
        match cli.command {
            Command::Run(a) => {
                assert_eq!(a.file, PathBuf::from("p.yaml"));
                assert_eq!(a.data_dir, Some(PathBuf::from("/d")));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli =
            Cli::try_parse_from(["sluice", "connectors", "spec", "file", "--json"]).expect("spec");
        assert!(matches!(
            cli.command,
            Command::Connectors {
                command: ConnectorsCommand::Spec { json: true, .. }
            }
        ));
        let cli = Cli::try_parse_from(["sluice", "--log-level", "debug", "validate", "p.yaml"])
            .expect("validate");
        assert_eq!(cli.log_level, "debug");
        assert!(Cli::try_parse_from(["sluice", "run"]).is_err());
    }
}
