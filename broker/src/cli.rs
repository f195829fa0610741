//! The `dishsync-broker` command line: parses arguments, sets up logging,
//! loads the configuration and runs the broker. Lives in the library so
//! that the end-to-end tests run exactly this code as a child process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::Settings;
use clap::{Parser, Subcommand};

/// The dishsync broker: MQTT with live, durable dish availability.
///
/// With no arguments it runs the built-in demo chain (3 stores) on
/// 127.0.0.1:1883 with data in ./dishsync-data, anonymous access on.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on for MQTT (overrides the configuration).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the HTTP listener — health (`/healthz`) and readiness
    /// (`/readyz`) — (overrides the configuration's `[web] listen`).
    #[arg(long)]
    web_listen: Option<SocketAddr>,
    /// Data directory (overrides the configuration).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML). Without it, the built-in demo chain runs,
    /// with its dinner service playing at the harbour and the airport.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How log lines are written to standard error: `text` (colours only on
    /// a terminal) or `json` (one object per line, for a log shipper).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// With the built-in demo chain: do not play the dinner service.
    #[arg(long)]
    no_demo_service: bool,
    /// With the built-in demo chain: the dinner service's seed (the same
    /// seed plays the same service).
    #[arg(long, default_value_t = 7)]
    demo_seed: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How the broker writes its log.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines; ANSI colours only when standard error is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit (non-zero with every problem
    /// listed when it is invalid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Hash a device password for the configuration file (`password_hash`).
    /// Reads the password from the first line of standard input.
    HashPassword,
    /// Mint a bearer token for an integration (`[[integrations]]`): prints
    /// the token on the first line — give it to the integration, it is
    /// shown once — and on the second the `token_sha256` line for the
    /// configuration, which keeps only the hash.
    MintToken,
    /// Make a signing secret for a webhook endpoint (`[[webhooks]]`):
    /// prints the `secret = "whsec_…"` line for the configuration; the
    /// receiver verifies signatures with the same secret.
    WebhookSecret,
    /// Ask a running broker's web listener whether it is ready (`GET
    /// /readyz`): exit 0 when it is, 1 when it is not or does not answer —
    /// a health check for a container or a supervisor that has no HTTP
    /// client.
    Ready {
        /// The web listener, host:port.
        #[arg(default_value = "127.0.0.1:8080")]
        web: String,
    },
    /// Take a backup of a running broker through its web listener: a
    /// consistent snapshot, written to FILE; the broker keeps serving. The
    /// bearer token of an `operator` or `hq` integration is read from the
    /// environment variable `DISHSYNC_TOKEN` (never from the command line).
    Backup {
        /// Where the backup goes.
        #[arg(long)]
        to: PathBuf,
        /// The web listener, host:port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        web: String,
    },
    /// Rebuild a data directory (`--data-dir`, which must not exist or be
    /// empty) from a backup FILE; start the broker on it after.
    Restore {
        /// The backup.
        file: PathBuf,
    },
    /// Repair a damaged journal in the data directory (the broker must be
    /// stopped): keeps every intact record, sets the damaged segments
    /// aside, and reports what is lost.
    Repair,
    /// Run the rules as a worker attached to an external MQTT broker (EMQX,
    /// HiveMQ, VerneMQ, mosquitto) instead of embedding one: inputs of the
    /// configuration's stores are taken from it, every output is published
    /// there. `--config` and `--data-dir` apply; `--listen` does not.
    Worker {
        /// The external broker, host:port.
        #[arg(long)]
        connect: String,
        /// The worker's client id: keep it the same across restarts, so the
        /// inputs queued for it meanwhile are delivered.
        #[arg(long, default_value = "dishsync-worker")]
        client_id: String,
        /// Username at the external broker.
        #[arg(long, env = "DISHSYNC_WORKER_USERNAME")]
        username: Option<String>,
        /// Password at the external broker.
        #[arg(long, env = "DISHSYNC_WORKER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Run the rules as one partition's worker on a NATS JetStream cluster
    /// (docs/scale-out.md): the partition is the configuration's stores;
    /// several workers may run for it, one serves and the others stand by.
    /// `--config` and `--data-dir` (the worker's local copy, rebuilt from
    /// the cluster's log) apply; `--listen` does not.
    Cluster {
        /// A NATS server of the cluster, `nats://host:port` (repeat it for
        /// each).
        #[arg(long = "nats", required = true)]
        nats: Vec<String>,
        /// An MQTT listener of the cluster, host:port (repeat it): outputs
        /// go to the first that answers.
        #[arg(long = "mqtt", required = true)]
        mqtt: Vec<String>,
        /// The partition this worker serves.
        #[arg(long)]
        partition: String,
        /// This worker's name, unique in the cluster.
        #[arg(long)]
        worker_id: String,
        /// Copies the cluster keeps of the inputs and the partition's log.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// How long a worker's claim on its partition lives unrenewed, in
        /// milliseconds: a standby takes over within about this long.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// How often every retained document is published again, in
        /// milliseconds.
        #[arg(long, default_value_t = 60_000)]
        republish_ms: u64,
        /// A snapshot of the partition's state is stored once this many
        /// entries were appended to its log since the last: a takeover
        /// reads the snapshot and the entries after it.
        #[arg(long, default_value_t = 10_000)]
        snapshot_every: u64,
        /// Username at the cluster (NATS and its MQTT listeners).
        #[arg(long, env = "DISHSYNC_CLUSTER_USERNAME")]
        username: Option<String>,
        /// Password at the cluster.
        #[arg(long, env = "DISHSYNC_CLUSTER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// The authority that signed the cluster's certificates: connect
        /// over TLS, to NATS and to the MQTT listeners.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// The worker's certificate, where the cluster asks for one.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The worker's private key.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Ready { web }) = &args.command {
        return match crate::web::probe_ready(web, std::time::Duration::from_secs(5)) {
            Ok(()) => {
                println!("ready");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("dishsync-broker: not ready: {why}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Backup { to, web }) = &args.command {
        return backup(web, to);
    }
    if let Some(Command::HashPassword) = &args.command {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("dishsync-broker: cannot read the password: {e}");
            return ExitCode::FAILURE;
        }
        let password = line.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            eprintln!("dishsync-broker: empty password (give it on standard input)");
            return ExitCode::from(2);
        }
        return match crate::auth::hash_password(password) {
            Ok(hash) => {
                println!("{hash}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dishsync-broker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::WebhookSecret) = &args.command {
        return match crate::webhooks::Secret::generate() {
            Ok(secret) => {
                println!("secret = \"{secret}\"");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dishsync-broker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::MintToken) = &args.command {
        return match crate::api::integrations::mint_token() {
            Ok((token, hash)) => {
                println!("{token}");
                println!("token_sha256 = \"{hash}\"");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dishsync-broker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::CheckConfig { file }) = &args.command {
        return match Settings::load(file) {
            Ok(s) => {
                let c = &s.catalog;
                println!(
                    "{}: ok ({} stores, {} SKUs, {} dishes)",
                    file.display(),
                    c.stores().count(),
                    c.skus().count(),
                    c.dishes().count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmqtt=warn,rmqtt_net=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => {
            use std::io::IsTerminal;
            logs.with_ansi(std::io::stderr().is_terminal()).init();
        }
        LogFormat::Json => logs.json().init(),
    }

    let loaded = match &args.config {
        Some(path) => Settings::load(path),
        None => Settings::demo(),
    };
    let mut settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let overrides = crate::reload::Overrides {
        listen: args.listen,
        web: args.web_listen,
        data_dir: args.data_dir.clone(),
    };
    overrides.apply(&mut settings);
    if let Some(file) = &args.config {
        settings.source = Some(crate::reload::Source {
            file: file.clone(),
            overrides,
        });
    }
    if let Some(Command::Repair) = &args.command {
        return repair(&settings.data_dir);
    }
    if let Some(Command::Restore { file }) = &args.command {
        return restore(file, &settings.data_dir);
    }
    if args.config.is_none() && args.command.is_none() {
        if !args.no_demo_service {
            settings.demo_service = Some(args.demo_seed);
        }
        print_demo_banner(&settings);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = match args.command {
        Some(Command::Worker {
            connect,
            client_id,
            username,
            password,
        }) => {
            let Some((host, port)) = connect.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse().ok()?))) else {
                eprintln!("dishsync-broker: --connect wants host:port, not {connect}");
                return ExitCode::from(2);
            };
            let attach = crate::worker::Attach {
                host: host.to_string(),
                port,
                client_id,
                credentials: username.map(|u| (u, password.unwrap_or_default())),
            };
            runtime.block_on(crate::worker::run(settings, attach))
        }
        Some(Command::Cluster {
            nats,
            mqtt,
            partition,
            worker_id,
            replicas,
            lease_ms,
            republish_ms,
            snapshot_every,
            username,
            password,
            tls_ca,
            tls_cert,
            tls_key,
        }) => {
            let mut listeners = Vec::new();
            for listener in &mqtt {
                let Some(hp) = listener
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
                else {
                    eprintln!("dishsync-broker: --mqtt wants host:port, not {listener}");
                    return ExitCode::from(2);
                };
                listeners.push(hp);
            }
            let join = crate::cluster::Join {
                nats,
                mqtt: listeners,
                partition,
                worker: worker_id,
                replicas,
                lease: std::time::Duration::from_millis(lease_ms.max(1_000)),
                republish_every: std::time::Duration::from_millis(republish_ms.max(100)),
                snapshot_every: snapshot_every.max(1),
                credentials: username.map(|u| (u, password.unwrap_or_default())),
                tls: tls_ca.map(|ca| crate::cluster::Tls {
                    ca,
                    client: tls_cert.zip(tls_key),
                }),
            };
            runtime.block_on(crate::cluster::run(settings, join))
        }
        _ => runtime.block_on(crate::run(settings)),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dishsync-broker: {e:#}");
            // A storage failure while serving: EX_SOFTWARE, for supervisors.
            if e.downcast_ref::<crate::store::StorageFailed>().is_some() {
                ExitCode::from(70)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `dishsync-broker repair`: exit 0 when the journal is intact or was
/// repaired, with the report on standard output.
/// `backup`: the running broker's backup, from its web listener `web`, to
/// `to`, checked whole before it is called done.
fn backup(web: &str, to: &std::path::Path) -> ExitCode {
    use std::io::{BufRead, Read, Write};
    let Ok(token) = std::env::var("DISHSYNC_TOKEN") else {
        eprintln!("dishsync-broker: set DISHSYNC_TOKEN to an operator or hq integration's token");
        return ExitCode::from(2);
    };
    let fetched = (|| -> Result<crate::store::backup::Summary, String> {
        let mut stream = crate::web::connect(web, std::time::Duration::from_secs(300))?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {web}\r\nAuthorization: Bearer {}\r\n\r\n",
            crate::api::BACKUP_ROUTE,
            token.trim()
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        if status.split_whitespace().nth(1) != Some("200") {
            let mut why = String::new();
            let _ = reader.take(64 << 10).read_to_string(&mut why);
            return Err(format!("{} {why}", status.trim()));
        }
        let mut file = std::fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
        std::io::copy(&mut reader, &mut file)
            .and_then(|_| file.sync_all())
            .map_err(|e| format!("{}: {e}", to.display()))?;
        // Checked whole from the disk, or not kept.
        let summary = crate::store::backup::check_file(to).map_err(|e| {
            let _ = std::fs::remove_file(to);
            e.to_string()
        })?;
        Ok(summary)
    })();
    match fetched {
        Ok(summary) => {
            println!(
                "backup written to {}: {} records, {} journal groups, up to group {}",
                to.display(),
                summary.pairs,
                summary.groups,
                summary.last_group
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("dishsync-broker: no backup: {why}");
            ExitCode::FAILURE
        }
    }
}

/// `restore`: a data directory at `data_dir` from the backup `file`.
fn restore(file: &std::path::Path, data_dir: &std::path::Path) -> ExitCode {
    match crate::store::Store::restore(file, data_dir) {
        Ok(summary) => {
            println!(
                "{} restored from {}: {} records, {} journal groups, up to group {}",
                data_dir.display(),
                file.display(),
                summary.pairs,
                summary.groups,
                summary.last_group
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dishsync-broker: cannot restore into {}: {e}", data_dir.display());
            ExitCode::FAILURE
        }
    }
}

fn repair(data_dir: &std::path::Path) -> ExitCode {
    if !data_dir.exists() {
        eprintln!("dishsync-broker: no data directory at {}", data_dir.display());
        return ExitCode::from(2);
    }
    match crate::store::Store::repair(data_dir) {
        Ok(report) => {
            println!("{}: {report}", data_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dishsync-broker: cannot repair {}: {e}", data_dir.display());
            ExitCode::FAILURE
        }
    }
}

fn print_demo_banner(s: &Settings) {
    let c = &s.catalog;
    let stores: Vec<&str> = c.stores().map(|s| s.id.as_str()).collect();
    println!(
        "dishsync demo chain: stores {} · {} SKUs · {} dishes · data in {}",
        stores.join(", "),
        c.skus().count(),
        c.dishes().count(),
        s.data_dir.display()
    );
    let host = s.listen.ip();
    let port = s.listen.port();
    println!("watch it:");
    println!("  mosquitto_sub -h {host} -p {port} -v -t 'stores/downtown/dishes/+/availability'");
    println!("  mosquitto_sub -h {host} -p {port} -v -t 'stores/+/stock/+/level' -t 'stores/+/errors/#'");
}
