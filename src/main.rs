//! `dynamodb-nakadi-relay`: configuration → telemetry → build → run until SIGTERM → drain.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dynamodb_nakadi_relay::app::App;
use dynamodb_nakadi_relay::config::Config;
use dynamodb_nakadi_relay::ids::ShardId;
use dynamodb_nakadi_relay::snapshot::Snapshot;
use dynamodb_nakadi_relay::startup::{self, AwsClients};
use dynamodb_nakadi_relay::{admin, check, event_type, lease};
use dynamodb_nakadi_relay::{shutdown, telemetry};

/// mimalloc's v2 line: an idle poll allocates and frees a few hundred small blocks, a visible
/// share of its CPU under glibc's malloc, and v3 keeps its arenas committed, which held a pod
/// with a thousand shards above its memory budget (docs/DESIGN.md, "GetRecords without the SDK").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Publish the table's current state as data_op S events (a parallel, rate-limited Scan),
    /// continuing an interrupted snapshot; prints a JSON summary. Exit 0 once every segment is
    /// done, 1 when stopped early (run it again to continue).
    Snapshot {
        /// Start over, even when a snapshot finished or is half done.
        #[arg(long)]
        restart: bool,
        /// The table to snapshot, by name; needed when RELAY_TABLES_FILE names several.
        #[arg(long)]
        table: Option<String>,
    },
    /// Check the configuration against every outside system (the table's stream, the lease
    /// table, the DLQ, the Nakadi token and event type), one line per check; writes nothing.
    /// Exit 0 when no check failed, 1 when one did.
    Check {
        /// The table to check, by name; without it every configured table is checked.
        #[arg(long)]
        table: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Admin(AdminCommand),
    /// Print the Nakadi event type of a configured table as JSON, the body of
    /// `POST /event-types`. Reads only the configuration; calls no AWS API.
    EventType {
        /// The application that owns the event type.
        #[arg(long)]
        owning_application: String,
        /// The table's key attributes: the hash key, then the range key if any (pk or pk,sk).
        #[arg(long, required = true, value_delimiter = ',')]
        key: Vec<String>,
        /// The table, by name; needed when RELAY_TABLES_FILE names several.
        #[arg(long)]
        table: Option<String>,
        /// The event type's audience, such as company-internal.
        #[arg(long)]
        audience: Option<String>,
        /// The authorization section as JSON: {"admins":[…],"readers":[…],"writers":[…]}.
        #[arg(long)]
        authorization: Option<String>,
        /// A label as KEY=VALUE; repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
}

/// The operator's commands on a stream's leases.
#[derive(Subcommand)]
enum AdminCommand {
    /// List every shard of the stream with its lease: state, owner, checkpoint, parents, the
    /// age of its last delivered record, and what operators asked of it.
    Leases {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Publish again what the stream still holds from a point, with the same eids, through the
    /// lease protocol: the pods pick the new checkpoints up without a restart.
    Rewind {
        /// TRIM_HORIZON, or an RFC 3339 time within the stream's 24 hours.
        #[arg(long)]
        to: String,
        /// Only this shard (and its descendants).
        #[arg(long)]
        shard: Option<String>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Send one record's event to the dead-letter queue instead of Nakadi, so a record Nakadi
    /// refuses stops blocking its shard; re-drive the letter once the cause is fixed.
    Skip {
        #[arg(long)]
        shard: String,
        #[arg(long)]
        sequence_number: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(clap::Args)]
struct TargetArgs {
    /// The table, by name; needed when RELAY_TABLES_FILE names several.
    #[arg(long)]
    table: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ChangeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Why, for the lease's audit trail.
    #[arg(long)]
    reason: String,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs an operator command against its table's stream and lease table.
async fn admin(config: &Config, command: AdminCommand) -> ExitCode {
    let aws = AwsClients::from_env(config.lease.call_timeout).await;
    let target_args = match &command {
        AdminCommand::Leases { target } => target,
        AdminCommand::Rewind { change, .. } | AdminCommand::Skip { change, .. } => &change.target,
    };
    let json = target_args.json;
    let result = match admin::Target::open(config, target_args.table.as_deref(), &aws).await {
        Err(e) => Err(e),
        Ok(target) => match command {
            AdminCommand::Leases { .. } => admin::leases::run(&target, json).await,
            AdminCommand::Rewind { to, shard, change } => {
                match admin::rewind::To::parse(&to, lease::now_ms()) {
                    Ok(to) => {
                        let shard = shard.map(ShardId::new);
                        admin::rewind::run(
                            &target,
                            &to,
                            shard.as_ref(),
                            &change.reason,
                            change.dry_run,
                            json,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            AdminCommand::Skip {
                shard,
                sequence_number,
                change,
            } => {
                admin::skip::run(
                    &target,
                    &ShardId::new(shard),
                    &sequence_number,
                    &change.reason,
                    change.dry_run,
                    json,
                )
                .await
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Bad configuration, missing table, stream or queue: exit code 2, as DESIGN.md promises.
const EXIT_CONFIG: u8 = 2;

/// A start-up check failed: say which setting, on stderr and in the log, and exit 2.
fn cannot_start(e: &startup::StartupError) -> ExitCode {
    tracing::error!(variable = e.variable, "cannot start: {e}");
    eprintln!("cannot start: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One thread, the default, is the current-thread scheduler: the same single thread running
    // every task, without the work-stealing scheduler's bookkeeping on each wake-up, which an
    // idle poll pays several times (docs/performance.md).
    let mut runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.worker_threads);
        builder
    };
    runtime
        .enable_all()
        .build()
        .expect("the runtime starts")
        .block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> ExitCode {
    if let Some(Command::EventType {
        owning_application,
        key,
        table,
        audience,
        authorization,
        labels,
    }) = cli.command
    {
        let options = event_type::Options {
            owning_application,
            key,
            audience,
            authorization,
            labels,
        };
        let built = event_type::pick(&config, table.as_deref())
            .and_then(|table| event_type::build(table, &options));
        return match built {
            Ok(definitions) => {
                // A table of one route prints the one body, as before routes existed; a table
                // of several prints a list of bodies, one per route.
                let printed = match definitions.as_slice() {
                    [one] => serde_json::to_string_pretty(one),
                    all => serde_json::to_string_pretty(all),
                };
                println!("{}", printed.expect("the event type serializes"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot make the event type: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if let Some(Command::Check { table, json }) = cli.command {
        return check(&config, table.as_deref(), json).await;
    }
    telemetry::init(config.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Admin(command) => admin(&config, command).await,
        Command::Run => {
            let stop = shutdown::signal_received();
            tokio::pin!(stop);
            let app = match App::start(config, stop.as_mut()).await {
                Ok(Some(app)) => app,
                Ok(None) => return ExitCode::SUCCESS,
                Err(e) => return cannot_start(&e),
            };
            app.run_until_stopped(stop).await;
            ExitCode::SUCCESS
        }
        Command::Redrive { once } => {
            let aws = AwsClients::from_env(config.lease.call_timeout).await;
            let redrainer = match startup::redrainer(&config, &aws).await {
                Ok(r) => r,
                Err(e) => return cannot_start(&e),
            };
            let stop = shutdown::token_cancelled_on_signal();
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
        Command::Snapshot { restart, table } => {
            let aws = AwsClients::from_env(config.lease.call_timeout).await;
            let snapshot = match Snapshot::build(&config, table.as_deref(), &aws).await {
                Ok(s) => s,
                Err(e) => return cannot_start(&e),
            };
            let stop = shutdown::token_cancelled_on_signal();
            match snapshot.run(restart, stop).await {
                Ok(summary) => {
                    println!(
                        "{}",
                        serde_json::to_string(&summary).expect("the summary serializes")
                    );
                    if summary.finished {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("snapshot failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::EventType { .. } | Command::Check { .. } => {
            unreachable!("handled above, before logging starts")
        }
    }
}

/// `check`: its report is the output, so nothing is logged beside it.
async fn check(config: &Config, table: Option<&str>, json: bool) -> ExitCode {
    let tables = match check::tables(config, table) {
        Ok(tables) => tables,
        Err(e) => {
            eprintln!("cannot check: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let aws = AwsClients::from_env(config.lease.call_timeout).await;
    let report = check::run(config, &tables, &aws).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).expect("the report serializes")
        );
    } else {
        print!("{report}");
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
