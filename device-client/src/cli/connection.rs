//! What every `dishsync` command shares: how to reach the broker and who
//! this device is ([`Connection`], from flags and the environment), and
//! how a command reports (text, or JSON lines with `--json`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dishsync_protocol::{DeviceId, StoreId};

use crate::client::{ClientConfig, Watch};

#[derive(Args)]
pub(crate) struct Connection {
    /// Broker address, host:port.
    #[arg(long, env = "DISHSYNC_BROKER", default_value = "127.0.0.1:1883", global = true)]
    pub(crate) broker: String,
    /// The store this device belongs to.
    #[arg(long, env = "DISHSYNC_STORE", default_value = "downtown", global = true)]
    pub(crate) store: StoreId,
    /// This device's id (also its MQTT client id).
    #[arg(long, env = "DISHSYNC_DEVICE", default_value = "dishsync-cli", global = true)]
    pub(crate) device: DeviceId,
    /// Username, when the broker requires credentials.
    #[arg(long, env = "DISHSYNC_USERNAME", global = true)]
    pub(crate) username: Option<String>,
    /// Password, when the broker requires credentials.
    #[arg(long, env = "DISHSYNC_PASSWORD", global = true, hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// Use TLS, trusting the broker certificate's CA in this PEM file.
    #[arg(long, env = "DISHSYNC_TLS_CA", global = true)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// This device's TLS certificate (PEM), when the broker requires one.
    #[arg(long, env = "DISHSYNC_TLS_CERT", global = true, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// This device's TLS private key (PEM).
    #[arg(long, env = "DISHSYNC_TLS_KEY", global = true, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Outbox directory (default: per device under the user's data directory).
    #[arg(long, env = "DISHSYNC_OUTBOX", global = true)]
    pub(crate) outbox: Option<PathBuf>,
    /// Seconds to wait for the broker's ack before leaving a message queued.
    #[arg(long, default_value_t = 10, global = true)]
    pub(crate) wait: u64,
    /// This device belongs to HQ (central kitchen, HQ): its acks come under
    /// whichever store an input concerns.
    #[arg(long, env = "DISHSYNC_HQ", global = true)]
    pub(crate) hq: bool,
    /// Print JSON lines instead of text (for scripts).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Connection {
    pub(crate) fn outbox_dir(&self) -> PathBuf {
        if let Some(dir) = &self.outbox {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("dishsync")
            .join("outbox")
            .join(self.store.as_str())
            .join(self.device.as_str())
    }

    pub(crate) fn config(&self, outbox_dir: PathBuf, watch: Vec<Watch>) -> anyhow::Result<ClientConfig> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
            .ok_or_else(|| anyhow::anyhow!("--broker {:?} is not host:port", self.broker))?;
        let mut config = ClientConfig::new(host, port, self.store.clone(), self.device.clone(), outbox_dir);
        config.credentials = match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        };
        if let Some(ca) = &self.tls_ca {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()));
            let client_cert = match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            config.tls = Some(crate::client::TlsSettings {
                ca_pem: read(ca)?,
                client_cert,
            });
        }
        config.max_backoff = Duration::from_secs(1);
        config.hq = self.hq;
        config.watch = watch;
        Ok(config)
    }
}

/// Prints `text`, or `doc` as a JSON line under `--json`.
pub(crate) fn say(conn: &Connection, text: &str, doc: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = if conn.json {
        writeln!(out, "{doc}")
    } else {
        writeln!(out, "{text}")
    };
    let _ = out.flush();
}
