//! Start-up and the listener: the broker's imperative shell, in order.
//!
//! 1. Build rmqtt's context with our retainer and hooks.
//! 2. Open sled, restore the inventory from its snapshot, start it (opening
//!    stock for new stores, the condition pass over every SKU and dish),
//!    persist whatever that changed.
//! 3. Publish every level, dish availability and menu document, retained —
//!    before any client can connect, so the first POS gets the truth.
//! 4. Start the rules task, then bind the listener and serve.

use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dishsync_inventory::Inventory;
use dishsync_protocol::payload::Timestamp;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use tracing::{info, warn};

use crate::auth::{Authenticator, Identities};
use crate::config::Settings;
use crate::hooks::{DropCounter, IntakeHook, PresenceHook, Sessions, SubscribeHook};
use crate::outbound::{Outbound, Publisher};
use crate::retainer::{MemoryRetainer, RoundRobinGroups};
use crate::rules::{self, stage_changes};
use crate::store::Store;

/// Priority of our hooks: above any plugin's.
const HOOK_PRIORITY: u32 = 1000;

/// Runs the broker until the process is stopped. Prints one line,
/// `dishsync-broker listening on mqtt://ADDR`, once clients can connect.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // rmqtt's default "busy" check refuses new connections while the
    // machine's load average is high: on a busy 2-core store server that
    // would lock POS terminals out exactly at the dinner rush. Connection
    // limits are set on the listeners instead.
    let scx = ServerContext::new().busy_check_enable(false).build().await;
    let retainer = MemoryRetainer::default();
    *scx.extends.retain_mut().await = Box::new(retainer.clone());
    *scx.extends.shared_subscription_mut().await = Box::<RoundRobinGroups>::default();
    let out = Outbound::new(scx.clone(), retainer);

    // The HTTP listener first: a long restore is "alive, not ready".
    let readiness = crate::web::Readiness::new(settings.data_dir.clone());
    let api_slot = crate::api::Slot::default();
    let web_tls = web_tls(&settings)?;
    let web_task = crate::web::open(settings.web, web_tls, readiness.clone(), Some(api_slot.clone())).await?;

    let (store, inventory) = restore(&settings, &readiness, None).await?;
    republish_all(&out, &inventory).await;
    info!("state restored and re-published");

    let catalog = inventory.catalog().clone();
    let storage = store.clone();
    let webhooks = start_webhooks(&settings, &store, Arc::new(out.clone()))?;
    let rules = rules::start(inventory, store, Arc::new(out.clone()), webhooks.clone());
    readiness.restored(storage.clone(), rules.clone());
    tokio::spawn(crate::metrics::publish_retained(
        out.clone(),
        rules.clone(),
        storage.clone(),
    ));
    compact_history(&storage, &settings);
    if let Some(seed) = settings.demo_service {
        tokio::spawn(crate::demo::run(rules.clone(), catalog, seed));
    }
    let identities = Identities::default();
    let namespaces = Arc::new(crate::namespaces::Namespaces::new(settings.namespaces.clone()));
    let people = settings
        .web
        .map(|_| crate::people::People::new(&settings.web_app, settings.login_failures_per_minute, storage.clone()));
    let directory = crate::current::Current::new(crate::api::Directory::new(
        settings.catalog.clone(),
        &settings.integrations,
        settings.max_publish_rate,
    ));
    let authenticator = Authenticator::new(
        settings.credentials.clone(),
        identities.clone(),
        namespaces.clone(),
        settings.allow_anonymous,
        settings.login_failures_per_minute,
    );
    let reloader = crate::reload::Reloader::new(
        settings.clone(),
        rules.clone(),
        authenticator.devices(),
        directory.clone(),
        api_slot.clone(),
    );
    crate::reload::reload_on_hangup(reloader.clone());
    let api = crate::api::Api::new(
        rules.clone(),
        namespaces.clone(),
        out.clone(),
        storage.clone(),
        directory,
    );
    let _ = api_slot.set(
        api.with_webhooks(webhooks)
            .with_people(people)
            .with_reloader(Some(reloader)),
    );
    let sessions = Sessions::new(identities, settings.allow_anonymous, namespaces);
    let register = scx.extends.hook_mgr().register();
    register
        .add_priority(Type::ClientAuthenticate, HOOK_PRIORITY, Box::new(authenticator))
        .await;
    let presence = PresenceHook::new(rules.clone(), sessions.clone());
    register
        .add_priority(Type::ClientConnected, HOOK_PRIORITY, Box::new(presence))
        .await;
    let presence = PresenceHook::new(rules.clone(), sessions.clone());
    register
        .add_priority(Type::ClientDisconnected, HOOK_PRIORITY, Box::new(presence))
        .await;
    let intake = IntakeHook::new(rules, out.clone(), sessions.clone(), settings.max_publish_rate);
    register
        .add_priority(Type::MessagePublishCheckAcl, HOOK_PRIORITY, Box::new(intake))
        .await;
    register
        .add_priority(
            Type::ClientSubscribeCheckAcl,
            HOOK_PRIORITY,
            Box::new(SubscribeHook::new(sessions)),
        )
        .await;
    // A document dropped for a subscriber is owed to it, and paid back as
    // its queue drains.
    tokio::spawn(out.owed().run(scx.clone(), out.clone()));
    register
        .add_priority(
            Type::MessageDelivered,
            HOOK_PRIORITY,
            Box::new(crate::hooks::DeliveredHook::new(&out)),
        )
        .await;
    register
        .add_priority(Type::MessageDropped, HOOK_PRIORITY, Box::new(DropCounter::new(out)))
        .await;
    let takeover = crate::takeover::TakeoverWill::default();
    for hook in [Type::ClientConnect, Type::ClientConnack, Type::ClientDisconnected] {
        register
            .add_priority(hook, HOOK_PRIORITY, Box::new(takeover.clone()))
            .await;
    }
    register
        .add_priority(
            Type::MessageExpiryCheck,
            HOOK_PRIORITY,
            Box::new(crate::oversize::Oversize),
        )
        .await;
    let ends = crate::reconnect::SessionEnds::new(scx.clone());
    for hook in [Type::ClientDisconnected, Type::ClientConnect, Type::SessionTerminated] {
        register.add_priority(hook, HOOK_PRIORITY, Box::new(ends.clone())).await;
    }
    register.start().await;
    let connections: crate::front::SharedConnections = std::sync::Arc::new(ends);

    if !settings.allow_anonymous && settings.credentials.is_empty() {
        warn!("anonymous access is off and no devices are configured: no client can connect");
    }
    // The public plaintext address is the validating front's; the engine
    // listens on loopback behind it, told each client's address by a PROXY
    // protocol header (front.rs). Without the front, the engine listens on
    // the public address itself.
    let (public, engine) = if settings.validating_front {
        let public = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let engine = listener_allowing(&settings, "mqtt/tcp", ([127, 0, 0, 1], 0).into(), false)
            .proxy_protocol(true)
            .bind()
            .context("binding the engine's loopback listener")?;
        (Some(public), engine)
    } else {
        let engine = listener_allowing(&settings, "mqtt/tcp", settings.listen, false)
            .bind()
            .with_context(|| format!("binding {}", settings.listen))?;
        (None, engine)
    };
    let engine_addr = engine.local_addr().context("reading the engine's address")?;
    let addr = match &public {
        Some(public) => public.local_addr().context("reading the bound address")?,
        None => engine_addr,
    };
    let mut server = MqttServer::new(scx).listener_by_id(engine.tcp().context("starting the TCP listener")?, 1);
    let mut tls_addr = None;
    let mut tls_front = None;
    if let Some(tls) = &settings.tls {
        if settings.validating_front {
            // TLS ends in the front, which checks the packets like the
            // plaintext listener's and hands them to the same engine listener.
            let acceptor = crate::front::tls_acceptor(&tls.cert, &tls.key, tls.client_ca.as_deref())
                .context("the TLS listener's certificate and key")?;
            let bound = tokio::net::TcpListener::bind(tls.listen)
                .await
                .with_context(|| format!("binding {}", tls.listen))?;
            tls_addr = Some(bound.local_addr().context("reading the bound TLS address")?);
            tls_front = Some((bound, acceptor));
        } else {
            let bound = listener_allowing(&settings, "mqtt/tls", tls.listen, false)
                .tls_cert(Some(tls.cert.display().to_string()))
                .tls_key(Some(tls.key.display().to_string()))
                .tls_cross_certificate(tls.client_ca.is_some())
                .tls_client_ca_certs(tls.client_ca.as_ref().map(|p| p.display().to_string()))
                .bind()
                .with_context(|| format!("binding {}", tls.listen))?;
            tls_addr = Some(bound.local_addr().context("reading the bound TLS address")?);
            server = server.listener_by_id(
                bound.tls().context("starting the TLS listener (certificate and key)")?,
                2,
            );
        }
    }
    // The plaintext line comes last: it tells scripts (and the tests) that
    // every listener is up.
    if let Some(tls_addr) = tls_addr {
        println!("dishsync-broker listening on mqtts://{tls_addr}");
    }
    readiness.listening();
    println!("dishsync-broker listening on mqtt://{addr}");
    info!(%addr, tls = ?tls_addr, data_dir = %settings.data_dir.display(), "serving");
    tokio::select! {
        served = server.build().run() => served.context("serving MQTT")?,
        fronted = async {
            match public {
                Some(public) => crate::front::serve(public, engine_addr, None, front_limits(&settings), connections.clone()).await,
                None => std::future::pending().await,
            }
        } => fronted.context("accepting MQTT connections")?,
        fronted = async {
            match tls_front {
                Some((bound, acceptor)) => crate::front::serve(bound, engine_addr, Some(acceptor), front_limits(&settings), connections.clone()).await,
                None => std::future::pending().await,
            }
        } => fronted.context("accepting MQTT connections over TLS")?,
        served = web_task => match served {
            Ok(result) => result.context("serving HTTP")?,
            Err(e) => anyhow::bail!("the web listener stopped: {e}"),
        },
        // A failed write stops the broker: what reached the disk is unknown.
        what = storage.failed() => return Err(crate::store::StorageFailed(what).into()),
    }
    Ok(())
}

/// The web listener's TLS side, when `[web] tls` asks for it: the broker's
/// certificate and key (`[broker.tls]`).
pub(crate) fn web_tls(settings: &Settings) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    match (&settings.tls, settings.web_tls) {
        (Some(tls), true) => Ok(Some(
            crate::front::tls_acceptor(&tls.cert, &tls.key, None).context("the web listener's certificate and key")?,
        )),
        _ => Ok(None),
    }
}

/// The topic aliases an MQTT 5 client may set on one connection.
const TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// What the validating front holds each client to: what the engine's
/// listener announces.
fn front_limits(settings: &Settings) -> crate::front::Limits {
    crate::front::Limits {
        max_packet: settings.max_packet_size as usize,
        receive_maximum: settings.max_inflight.max(1),
        topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
    }
}

/// A listener with the settings every dishsync listener needs (ARCHITECTURE.md, *The engine*:
/// rebinding after a restart, in-flight window and queue bounds).
pub fn listener(settings: &Settings, name: &str, addr: std::net::SocketAddr) -> Builder {
    listener_allowing(settings, name, addr, settings.allow_anonymous)
}

/// [`listener`], the engine's own anonymous access set to `allow_anonymous`.
/// The broker's listeners say `false`: every login then reaches its login
/// hook, anonymous ones too (which the engine otherwise lets in unseen), so
/// every will is checked; the hook admits anonymous clients when the
/// configuration does.
fn listener_allowing(settings: &Settings, name: &str, addr: std::net::SocketAddr, allow_anonymous: bool) -> Builder {
    Builder::new()
        .name(name)
        .laddr(addr)
        .reuseaddr(Some(true))
        .nodelay(true)
        .allow_anonymous(allow_anonymous)
        .max_connections(settings.max_connections)
        .max_packet_size(settings.max_packet_size)
        .max_inflight(NonZeroU16::new(settings.max_inflight).unwrap_or(NonZeroU16::MIN))
        .max_mqueue_len(settings.max_mqueue_len)
        .max_topic_aliases(TOPIC_ALIAS_MAXIMUM)
        // A message without a Message Expiry Interval does not expire (MQTT 5
        // §3.3.2.3.3); the engine's default gives each one five minutes, and
        // its deliveries an expiry interval their publisher never set.
        // Offline queues stay bounded by `max_mqueue_len`.
        .message_expiry_interval(std::time::Duration::ZERO)
        .max_keepalive(3600)
}

/// Opens the data directory and restores the chain's state from it,
/// persisting what the restore changed (and which requests and transfers
/// it holds: a data directory from before that index gets it here). With
/// a `replica`, that commit and every later one are replicated to it.
pub(crate) async fn restore(
    settings: &Settings,
    readiness: &crate::web::Readiness,
    replica: Option<Arc<dyn crate::store::Replica>>,
) -> anyhow::Result<(Store, Inventory)> {
    let store = open_data_dir(&settings.data_dir, settings.checkpoint_interval, readiness).await?;
    if let Some(replica) = replica {
        store.replicate_to(replica);
    }
    // How long each step of the start took, for the log.
    let mut clock = std::time::Instant::now();
    let mut lap = || {
        let ms = clock.elapsed().as_millis();
        clock = std::time::Instant::now();
        ms
    };
    let mut stores: Vec<&str> = settings.catalog.stores().map(|s| s.id.as_str()).collect();
    stores.sort_unstable();
    let halfway = stores.get(stores.len() / 2).copied();
    let restored = store.load_halved(halfway).context("reading the snapshot")?;
    let read_ms = lap();
    let fresh_start = restored.is_empty();
    let now = Timestamp::now().0;
    let (mut inventory, mut changes) = Inventory::restore(settings.catalog.clone(), restored, now);
    let restore_ms = lap();
    // Opening stock for new stores, and the condition pass over everything.
    let started = inventory.start(now);
    let start_ms = lap();
    changes.merge(started.changes);
    let mut commit = store.begin()?;
    commit.ledger(&started.entries)?;
    stage_changes(&mut commit, &inventory, &changes)?;
    commit.document(&dishsync_inventory::Document::Shown, &inventory)?;
    store.commit(commit).await.context("persisting the initial state")?;
    info!(
        fresh_start,
        changed = changes.levels().count() + changes.dishes().count(),
        read_ms,
        restore_ms,
        start_ms,
        commit_ms = lap(),
        "state restored"
    );
    Ok((store, inventory))
}

/// Starts the webhook deliveries the configuration asks for, queued in
/// `store`; their alerts are published through `out`.
pub(crate) fn start_webhooks(
    settings: &Settings,
    store: &Store,
    out: Arc<dyn Publisher>,
) -> anyhow::Result<Option<Arc<crate::webhooks::Webhooks>>> {
    if settings.webhooks.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::webhooks::Webhooks::start(
        settings.webhooks.clone(),
        store,
        out,
    )?))
}

/// Starts the compaction of the history past its retention, in the
/// background.
pub(crate) fn compact_history(store: &Store, settings: &Settings) {
    tokio::spawn(crate::store::retention::compact_every::<crate::webhooks::DeadLetter>(
        store.clone(),
        settings.retention.clone(),
    ));
}

/// How long start-up waits for a data directory another process holds (a
/// broker still stopping, under a supervisor's restart) before it gives up.
const IN_USE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the data directory, waiting up to [`IN_USE_PATIENCE`] while
/// another process holds it — not ready meanwhile, and saying why.
async fn open_data_dir(
    dir: &Path,
    checkpoint_interval: std::time::Duration,
    readiness: &crate::web::Readiness,
) -> anyhow::Result<Store> {
    let deadline = tokio::time::Instant::now() + IN_USE_PATIENCE;
    loop {
        let path = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || open_store(&path, checkpoint_interval)).await?;
        match opened {
            Err(e)
                if e.downcast_ref::<crate::store::StoreError>()
                    .is_some_and(|e| matches!(e, crate::store::StoreError::InUse))
                    && tokio::time::Instant::now() < deadline =>
            {
                readiness.restoring(&format!(
                    "waiting for the data directory {}, which another process holds",
                    dir.display()
                ));
                warn!(dir = %dir.display(), "the data directory is in use by another process; waiting for it");
            }
            other => {
                readiness.restoring(crate::web::BEING_RESTORED);
                return other;
            }
        }
    }
}

fn open_store(dir: &Path, checkpoint_interval: std::time::Duration) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Stock and sales are business secrets: owner only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Store::open_checkpointing_every(dir, checkpoint_interval)
        .with_context(|| format!("opening the store in {}", dir.display()))
}

/// Publishes every retained document of the chain — each SKU's level, each
/// dish's availability, the requests and transfers shown, and each
/// store's catalog, menu and summary — as the topic's retained document
/// (to the embedded engine's retained store, where no one subscribes yet
/// at start-up; to an external broker, which also hands it to its
/// subscribers). A chain of 2,000 stores has 460,000 of them: the
/// rendering, which is pure, is shared between two threads.
pub(crate) async fn republish_all(out: &dyn Publisher, inv: &Inventory) {
    let now = Timestamp::now().0;
    let docs = dishsync_inventory::Document::published(inv);
    // Every other document to each thread: the list runs store by store,
    // with the large whole-menu documents at its end.
    let after_the_first = docs.get(1..).unwrap_or_default();
    let (first, second) = (docs.iter().step_by(2), after_the_first.iter().step_by(2));
    let (first, second) = crate::halves::on_two_threads(first, second, |docs| rules::render::documents(inv, docs, now));
    let mut retained = Vec::with_capacity(first.len() + second.len());
    let mut others = Vec::new();
    for m in first.into_iter().chain(second) {
        if m.retain {
            retained.push(m);
        } else {
            others.push(m);
        }
    }
    out.retain_all(retained).await;
    for m in others {
        out.publish(&m.topic, m.payload, false).await;
    }
}
