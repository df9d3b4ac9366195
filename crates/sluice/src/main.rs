//! The `sluice` binary: parses arguments, sets up logging and the runtime, runs a command and
//! turns its outcome into an exit code.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sluice::cli::{Cli, Command, ConnectorsCommand};
use sluice::commands::{self, CommandError};
use sluice::config::ConfigError;
use sluice::serve_config::ServeConfigError;
use sluice::ui;

/// mimalloc: the HTTP, JSON and store paths make many small short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before the heap grows: see `huge_pages` for why.
    let huge_pages = sluice::huge_pages::opt_out();
    let cli = Cli::parse();
    if let Err(e) = ui::init_logging(&cli.log_level, cli.log_format) {
        eprintln!("error: invalid log filter: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = huge_pages {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off; keeping the kernel's setting");
    }
    match execute(cli) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => report(&e),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; the outer error is a failure of the process itself (no runtime).
fn execute(cli: Cli) -> anyhow::Result<Result<(), CommandError>> {
    let registry = sluice_connectors::builtin_registry();
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Validate(args) => {
            commands::validate::validate(&args.file, &registry, &mut stdout, &mut std::io::stderr())
        }
        Command::Connectors { command } => match command {
            ConnectorsCommand::List => commands::connectors::list(&registry, &mut stdout),
            ConnectorsCommand::Spec { name, json } => {
                commands::connectors::spec(&registry, &name, json, &mut stdout)
            }
        },
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            if args.state.state {
                runtime.block_on(commands::bench_state::bench_state(
                    &args.state,
                    &args.dir,
                    &mut stdout,
                ))
            } else if args.watch.watch {
                runtime.block_on(commands::bench_watch::bench_watch(
                    &args.watch,
                    &args.dir,
                    args.state.postgres_url.as_deref(),
                    args.state.redis_url.as_deref(),
                    &mut stdout,
                ))
            } else if args.signaling.signaling {
                runtime.block_on(commands::bench_signaling::bench_signaling(
                    &args.signaling,
                    &args.dir,
                    args.state.postgres_url.as_deref(),
                    &mut stdout,
                ))
            } else if args.connectors.connectors {
                runtime.block_on(commands::bench_connectors::bench_connectors(
                    &args,
                    registry,
                    &mut stdout,
                ))
            } else {
                runtime.block_on(commands::bench::bench(&args, registry, &mut stdout))
            }
        }
        Command::Serve(args) => {
            drop(stdout);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            return Ok(runtime.block_on(commands::serve::serve_with(&args, registry)));
        }
        Command::Flows { server, command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime
                .block_on(commands::flows::run(&server, &command, &mut stdout))
                .map_err(CommandError::from)
        }
        Command::Pipelines { target, command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime
                .block_on(commands::pipelines::run(&target, &command, &mut stdout))
                .map_err(CommandError::from)
        }
        Command::Run(args) => {
            drop(stdout);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            return Ok(runtime.block_on(commands::run::run(&args, registry)));
        }
    };
    if result.is_ok() {
        stdout.flush().context("cannot write output")?;
    }
    Ok(result)
}

/// Prints a command's error and returns its exit code.
fn report(e: &CommandError) -> ExitCode {
    match e {
        // A closed stdout (`sluice connectors list | head -1`) is not worth a message.
        CommandError::Output(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {}
        CommandError::Config(ConfigError::Invalid(diagnostics))
        | CommandError::ServeConfig(ServeConfigError::Invalid(diagnostics)) => {
            for d in diagnostics {
                eprintln!("{d}");
            }
            let file = diagnostics.first().map(|d| d.file.as_str()).unwrap_or("");
            eprintln!("error: {file}: {} problem(s) found", diagnostics.len());
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(e.exit_code())
}
