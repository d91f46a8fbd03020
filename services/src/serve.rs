//! `strata serve`: opens the storage, starts the front ends, and shuts down cleanly.
//!
//! Start-up order matters for the promises made to clients: the catalog and object store are
//! reached first (a misconfigured URL fails fast, before any port opens), then the WAL is
//! recovered and its unflushed entries re-buffered, and only then do the listeners accept
//! clients. SIGTERM (or Ctrl-C) stops the listeners, flushes everything accepted to the object
//! store, and exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use strata_storage::cache::ReadCache;
use strata_storage::catalog::{Catalog, SqlCatalog};
use strata_storage::compaction::CompactionPolicy;
use strata_storage::objects::ObjectStorage;
use strata_storage::snapshot::Snapshotter;
use strata_storage::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::groups::GroupConfig;
use crate::broker::{Broker, BrokerConfig, TopicDefaults};
use crate::cluster::{Member, Membership, reconcile};
use crate::config::ServeArgs;

/// The broker id: the flag, else the one kept in `<data-dir>/broker-id`, else a new one,
/// kept there for next time.
fn broker_id(args: &ServeArgs) -> Result<i32> {
    if let Some(id) = args.broker_id {
        return Ok(id);
    }
    let path = args.data_dir.join("broker-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text.trim().parse().with_context(|| {
            format!(
                "{} does not hold a broker id; delete it or pass --broker-id",
                path.display()
            )
        });
    }
    let id = (uuid::Uuid::new_v4().as_u128() % (i32::MAX as u128 - 1)) as i32 + 1;
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

fn advertised(args: &ServeArgs) -> Result<(String, u16)> {
    match &args.advertised_kafka_addr {
        Some(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .with_context(|| format!("--advertised-kafka-addr '{addr}' must be HOST:PORT"))?;
            let port = port
                .parse()
                .with_context(|| format!("--advertised-kafka-addr '{addr}' has a bad port"))?;
            Ok((host.to_string(), port))
        }
        None => Ok((args.kafka_addr.ip().to_string(), args.kafka_addr.port())),
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; is another broker running? choose another address with the flag")
    })
}

/// The QUIC listener's TLS: the given certificate, or the one kept (made on first start) in
/// `<data-dir>/tls/`, which also covers the advertised host.
fn quic_tls(args: &ServeArgs, advertised_quic: &str) -> Result<rustls::ServerConfig> {
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => crate::tls::Identity {
            chain: crate::tls::load_certs(cert)?,
            key: crate::tls::load_key(key)?,
        },
        _ => {
            let host = advertised_quic
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string());
            crate::tls::TlsDir::new(&args.data_dir)
                .server_identity(&host.into_iter().collect::<Vec<_>>())?
        }
    };
    crate::tls::server_config(identity, args.client_ca.as_deref())
}

/// Runs the broker until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let node_id = broker_id(&args)?;
    let catalog_url = args.catalog_url();
    let catalog: Arc<dyn Catalog> = Arc::new(
        SqlCatalog::connect(&catalog_url)
            .await
            .with_context(|| format!("cannot open the catalog at {catalog_url}"))?,
    );
    let objects_url = args.objects_url().map_err(anyhow::Error::msg)?;
    let mut objects = ObjectStorage::from_url(&objects_url)?;
    if let Some(sim) = args.simulate_object_store_latency {
        tracing::warn!(
            ?sim,
            "SIMULATION: object-store calls are delayed on purpose"
        );
        objects = objects.with_simulated_latency(sim);
    }
    let cache = ReadCache::open(
        args.cache_memory,
        Some((args.data_dir.join("cache"), args.cache_disk)),
    )
    .await?;
    let kafka = bind(args.kafka_addr, "Kafka").await?;
    let http = bind(args.http_addr, "HTTP").await?;
    let advertised_kafka = advertised(&args)?;
    let advertised_quic = args
        .advertised_quic_addr
        .clone()
        .unwrap_or_else(|| args.quic_addr.to_string());
    let reset_secret = crate::tls::TlsDir::new(&args.data_dir).reset_secret()?;
    let quic = crate::quic::endpoint(
        args.quic_addr,
        quic_tls(&args, &advertised_quic)?,
        &reset_secret,
    )?;

    let engine = Engine::open(
        EngineConfig {
            broker_id: node_id.to_string(),
            wal_dir: args.data_dir.join("wal"),
            flush_interval: Duration::from_millis(args.flush_interval_ms.max(1)),
            flush_bytes: args.flush_bytes.max(1),
        },
        catalog.clone(),
        objects,
        cache.clone(),
        &[],
    )
    .await?;
    let membership = Arc::new(Membership::new(
        Member {
            node_id,
            kafka: advertised_kafka,
            quic: advertised_quic,
            http: args.http_addr.to_string(),
            zone: args.zone.clone(),
            heartbeat_ms: 0,
            leaving: false,
        },
        Duration::from_millis(args.lease_ms),
    ));
    let broker = Broker::open(
        engine.clone(),
        BrokerConfig {
            node_id,
            auto_create_topics: args.auto_create_topics,
            default_partitions: args.default_partitions.max(1),
            topic_defaults: TopicDefaults {
                max_message_bytes: args.max_message_bytes,
            },
            groups: GroupConfig {
                initial_rebalance_delay: Duration::from_millis(
                    args.group_initial_rebalance_delay_ms,
                ),
                ..GroupConfig::default()
            },
        },
        membership,
    )
    .await?;
    // Join before listening: register, and claim this broker's share of the partitions.
    reconcile::tick(&broker, &Arc::new(tokio::sync::Mutex::new(())))
        .await
        .context("cannot join the cluster through the catalog")?;

    let (stop, stopped) = watch::channel(false);
    let kafka_task = tokio::spawn(crate::kafka::serve(
        kafka,
        broker.clone(),
        args.max_request_bytes,
        stopped.clone(),
    ));
    let retention_task = tokio::spawn(retention(
        broker.clone(),
        Duration::from_millis(args.retention_interval_ms.max(10)),
        Duration::from_millis(args.gc_grace_ms),
        stopped.clone(),
    ));
    let compaction_task = tokio::spawn(compaction(
        broker.clone(),
        Duration::from_millis(args.compaction_interval_ms),
        CompactionPolicy {
            target_bytes: args.compaction_target_bytes.max(1) as u64,
            min_age: Duration::from_millis(args.compaction_min_age_ms),
        },
        stopped.clone(),
    ));
    let txn_task = tokio::spawn(transaction_timer(broker.clone(), stopped.clone()));
    let snapshotter = Arc::new(tokio::sync::Mutex::new(Snapshotter::new(
        catalog.clone(),
        engine.objects().clone(),
    )));
    let snapshot_task = tokio::spawn(snapshots(
        broker.clone(),
        snapshotter.clone(),
        Duration::from_millis(args.snapshot_interval_ms),
        stopped.clone(),
    ));
    let quic_task = tokio::spawn(crate::quic::serve(
        quic,
        broker.clone(),
        args.max_request_bytes,
        stopped.clone(),
    ));
    let cluster_task = tokio::spawn(reconcile::run(broker.clone(), stopped.clone()));
    let http_task = tokio::spawn(crate::http::serve(
        http,
        broker.clone(),
        args.max_request_bytes,
        stopped,
    ));
    tracing::info!(
        node_id,
        kafka = %args.kafka_addr,
        quic = %args.quic_addr,
        http = %args.http_addr,
        catalog = %catalog_url,
        objects = %objects_url,
        data_dir = %args.data_dir.display(),
        "strata broker ready"
    );

    wait_for_signal().await?;
    tracing::info!("shutting down: handing partitions over and flushing everything accepted");
    // Stop heartbeat ticks first so they cannot race the hand-over, then leave while the
    // listeners still answer: clients get NOT_LEADER_OR_FOLLOWER and the new owners.
    cluster_task.abort();
    reconcile::leave(&broker).await;
    stop.send_replace(true);
    let _ = kafka_task.await;
    let _ = quic_task.await;
    let _ = retention_task.await;
    let _ = compaction_task.await;
    let _ = txn_task.await;
    let _ = snapshot_task.await;
    engine.shutdown().await;
    if args.snapshot_interval_ms > 0 {
        // The state as it stands at the stop, for a recovery that may follow.
        snapshot_once(&broker, &snapshotter).await;
    }
    cache.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Applies retention, then collects objects left without live records, every `every` until
/// the broker stops. Only catalog reads happen when there is nothing to do: an idle broker
/// makes no object-store calls.
async fn retention(
    broker: Broker,
    every: Duration,
    grace: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first pass as the cluster's controller looks for orphans among all segments; later
    // passes only among the last two days', since orphans come from crashes, which are recent.
    let mut swept_all = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Each owner applies retention to its partitions; one broker collects garbage.
                broker.enforce_retention().await;
                let membership = broker.membership();
                if membership.controller() == membership.me().node_id {
                    broker.collect_garbage(grace, if swept_all { 2 } else { 0 }).await;
                    swept_all = true;
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Compacts the partitions this broker owns every `every` (never when `every` is zero) until
/// the broker stops. A pass over partitions with nothing to compact reads only the catalog.
async fn compaction(
    broker: Broker,
    every: Duration,
    policy: CompactionPolicy,
    mut stopped: watch::Receiver<bool>,
) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; nothing is settled at start-up
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A pass runs to its end (each step bounded) so a stop never cuts a rewrite.
                broker.compact(policy).await;
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Writes a catalog snapshot every `every` (never when zero) while this broker is the
/// cluster's controller, until the broker stops; nothing when the catalog did not change.
async fn snapshots(
    broker: Broker,
    snapshotter: Arc<tokio::sync::Mutex<Snapshotter>>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => snapshot_once(&broker, &snapshotter).await,
            _ = stopped.changed() => return,
        }
    }
}

/// One snapshot, if this broker is the controller.
async fn snapshot_once(broker: &Broker, snapshotter: &tokio::sync::Mutex<Snapshotter>) {
    let membership = broker.membership();
    if membership.controller() != membership.me().node_id {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match snapshotter.lock().await.run_once(now).await {
        Ok(Some(key)) => tracing::info!(object = %key, "wrote a catalog snapshot"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "catalog snapshot failed; retrying next interval"),
    }
}

/// How often the transaction timer looks for transactions past their timeout.
const TRANSACTION_CHECK: Duration = Duration::from_secs(1);

/// Aborts transactions that ran past their `transaction.timeout.ms`, and finishes those a
/// crash left half-ended, every [`TRANSACTION_CHECK`] until the broker stops (see
/// [`Broker::expire_transactions`]).
async fn transaction_timer(broker: Broker, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TRANSACTION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                broker.expire_transactions().await;
            }
            _ = stopped.changed() => return,
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
    }
    Ok(())
}
