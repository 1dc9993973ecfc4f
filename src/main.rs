//! `dynamodb-nakadi-relay`: configuration → telemetry → build → run until SIGTERM → drain.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dynamodb_nakadi_relay::app::{self, App, AwsClients};
use dynamodb_nakadi_relay::config::Config;
use dynamodb_nakadi_relay::{shutdown, telemetry};
use tokio_util::sync::CancellationToken;

/// Relays every change of a DynamoDB table from its stream to Nakadi. Configured with RELAY_*
/// environment variables (see the README).
#[derive(Parser)]
#[command(name = "dynamodb-nakadi-relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Republish what waits in the dead-letter queue.
    Redrive {
        /// One pass until the queue is empty (or Nakadi refuses a whole batch), then exit.
        #[arg(long)]
        once: bool,
    },
}

/// Bad configuration, missing table, stream or queue: exit code 2, as DESIGN.md promises.
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(config.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let stop = shutdown::signal_received();
            tokio::pin!(stop);
            let app = match App::start(config, stop.as_mut()).await {
                Ok(Some(app)) => app,
                Ok(None) => return ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(variable = e.variable, "cannot start: {e}");
                    eprintln!("cannot start: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            app.run_until_stopped(stop).await;
            ExitCode::SUCCESS
        }
        Command::Redrive { once } => {
            let aws = AwsClients::from_env().await;
            let redrainer = match app::redrainer(&config, &aws).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let stop = CancellationToken::new();
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    shutdown::signal_received().await;
                    stop.cancel();
                }
            });
            if once {
                let report = redrainer.round(&stop).await;
                println!(
                    "{{\"published\":{},\"failed\":{},\"undecodable\":{}}}",
                    report.published, report.failed, report.undecodable
                );
                if report.failed + report.undecodable > 0 {
                    return ExitCode::FAILURE;
                }
            } else {
                redrainer.run(stop).await;
            }
            ExitCode::SUCCESS
        }
    }
}
