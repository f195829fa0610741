//! Start-up and the listener: the broker's imperative shell, in order.
//!
//! 1. Build rmqtt's context with our retainer and hooks.
//! 2. Open sled, restore the inventory from its snapshot, persist whatever
//!    the catalog added.
//! 3. Publish every level, dish availability and menu document, retained —
//!    before any client can connect, so the first POS gets the truth.
//! 4. Start the rules task, then bind the listener and serve.

use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dishsync_inventory::{Changes, Inventory};
use dishsync_protocol::payload::Timestamp;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use tracing::{info, warn};

use crate::config::Settings;
use crate::hooks::{DropCounter, IntakeHook};
use crate::outbound::Outbound;
use crate::retainer::MemoryRetainer;
use crate::rules::{self, publish_changes, publish_menu, stage_changes};
use crate::store::Store;

/// Priority of our hooks: above any plugin's.
const HOOK_PRIORITY: u32 = 1000;

/// Runs the broker until the process is stopped. Prints one line,
/// `dishsync-broker listening on mqtt://ADDR`, once clients can connect.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let scx = ServerContext::new().build().await;
    *scx.extends.retain_mut().await = Box::<MemoryRetainer>::default();
    let out = Outbound::new(scx.clone());

    let store = open_data_dir(&settings.data_dir)?;
    let restored = store.load().context("reading the snapshot")?;
    let fresh_start = restored.is_empty();
    let now = Timestamp::now().0;
    let (inventory, changes) = Inventory::restore(settings.catalog.clone(), restored, now);
    if !changes.is_empty() {
        let mut commit = store.begin()?;
        stage_changes(&mut commit, &inventory, &changes)?;
        store.commit(commit).await.context("persisting the initial state")?;
    }
    republish_all(&out, &inventory).await;
    info!(
        fresh_start,
        changed = changes.levels.len() + changes.dishes.len(),
        "state restored and re-published"
    );

    let rules = rules::start(inventory, store, Arc::new(out.clone()));
    let register = scx.extends.hook_mgr().register();
    register
        .add_priority(
            Type::MessagePublishCheckAcl,
            HOOK_PRIORITY,
            Box::new(IntakeHook::new(rules, out)),
        )
        .await;
    register
        .add_priority(Type::MessageDropped, HOOK_PRIORITY, Box::new(DropCounter::default()))
        .await;
    register.start().await;

    if !settings.allow_anonymous {
        warn!("anonymous access is off and no device credentials are configured: no client can connect");
    }
    let listener = Builder::new()
        .name("mqtt/tcp")
        .laddr(settings.listen)
        .reuseaddr(Some(true))
        .nodelay(true)
        .allow_anonymous(settings.allow_anonymous)
        .max_inflight(NonZeroU16::new(settings.max_inflight).unwrap_or(NonZeroU16::MIN))
        .max_mqueue_len(settings.max_mqueue_len)
        .max_topic_aliases(64)
        .max_keepalive(3600)
        .bind()
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let listener = listener.tcp().context("starting the TCP listener")?;
    println!("dishsync-broker listening on mqtt://{addr}");
    info!(%addr, data_dir = %settings.data_dir.display(), "serving");
    MqttServer::new(scx)
        .listener(listener)
        .build()
        .run()
        .await
        .context("serving MQTT")?;
    Ok(())
}

fn open_data_dir(dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Stock and sales are business secrets: owner only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Store::open(dir).with_context(|| format!("opening the store in {}", dir.display()))
}

/// Publishes every retained document of the chain.
async fn republish_all(out: &Outbound, inv: &Inventory) {
    let mut all = Changes::default();
    let catalog = inv.catalog().clone();
    for store in catalog.stores() {
        for sku in catalog.skus() {
            all.levels.insert((store.id.clone(), sku.id.clone()));
        }
        for dish in &store.menu {
            all.dishes.insert((store.id.clone(), dish.clone()));
        }
    }
    publish_changes(out, inv, &all).await;
    for store in catalog.stores() {
        publish_menu(out, inv, &store.id).await;
    }
}
