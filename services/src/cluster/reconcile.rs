//! The heartbeat loop: renew the lease, refresh the view, and move ownership towards what
//! rendezvous placement wants. See the [module docs](super) for the protocol.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_storage::catalog::PartitionOwner;
use strata_storage::{Epoch, TopicPartition};
use tokio::sync::watch;

use super::Member;
use crate::broker::{Broker, BrokerError};

/// How long a hand-over waits for the partition's accepted data to commit before giving up
/// (and keeping the partition, to try again next heartbeat).
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The heartbeat interval for a lease: a quarter of it, at most one second, so a joining
/// broker is noticed (and a released partition claimed) within about a second.
pub fn heartbeat_interval(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// How long after a heartbeat this broker may keep acknowledging appends: three quarters of
/// the lease, leaving a quarter for clock drift between brokers and the catalog round trip.
fn lease_margin(lease: Duration) -> Duration {
    lease * 3 / 4
}

/// Runs heartbeats until `stopped` turns true.
pub async fn run(broker: Broker, mut stopped: watch::Receiver<bool>) {
    let every = heartbeat_interval(broker.membership().lease());
    let handing_over = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = tick(&broker, &handing_over).await {
            tracing::warn!(error = %e, "cluster heartbeat failed; retrying");
        }
    }
}

/// One heartbeat: register (renewing the lease), read members and owners, then claim what
/// this broker should own and may take, drop what it was fenced from, and hand over (in the
/// background) what another broker should own.
pub async fn tick(
    broker: &Broker,
    handing_over: &Arc<tokio::sync::Mutex<()>>,
) -> Result<(), BrokerError> {
    let membership = broker.membership();
    let lease = membership.lease();
    let started = Instant::now();
    let mut me = membership.me().clone();
    me.leaving = membership.leaving();
    broker.catalog().register_broker(&me.to_info()).await?;

    let now = now_ms();
    let lease_ms = lease.as_millis() as i64;
    let members: Vec<Member> = broker
        .catalog()
        .brokers()
        .await?
        .iter()
        .filter(|b| now - b.heartbeat_ms <= lease_ms)
        .filter_map(Member::from_info)
        .collect();
    broker.sync_topics().await?;
    let owners = broker.catalog().partition_owners().await?;
    membership.publish(members, &owners);
    broker.groups().forget_unless(|g| membership.coordinates(g));

    let plan = plan(broker, &owners);
    if !plan.lost.is_empty() {
        tracing::warn!(
            partitions = plan.lost.len(),
            "another broker claimed partitions this broker held; dropping them"
        );
        broker.engine().forget(&plan.lost);
    }
    // Renewed only now, after dropping what others claimed meanwhile: a broker waking from
    // a freeze takes no append for a partition it lost.
    broker.engine().renew_lease(started + lease_margin(lease));
    if !plan.unheld.is_empty() {
        tracing::warn!(
            partitions = plan.unheld.len(),
            "releasing partitions recorded as ours that this broker no longer holds"
        );
        broker
            .catalog()
            .release_partitions(&membership.me().node_id.to_string(), &plan.unheld)
            .await?;
    }
    if !plan.claims.is_empty() {
        let won = broker.engine().claim_at(&plan.claims).await?;
        if !won.is_empty() {
            tracing::info!(partitions = won.len(), "claimed partitions");
        }
    }
    if !plan.releases.is_empty()
        && let Ok(guard) = handing_over.clone().try_lock_owned()
    {
        let broker = broker.clone();
        tokio::spawn(async move {
            let _guard = guard;
            hand_over(&broker, &plan.releases).await;
        });
    }
    Ok(())
}

/// What one heartbeat should change.
struct Plan {
    claims: Vec<(TopicPartition, Epoch)>,
    releases: Vec<TopicPartition>,
    lost: Vec<TopicPartition>,
    /// Partitions the catalog says this broker owns but it does not hold (it dropped them
    /// after a failed commit) and should not own: released at once, or no one would take
    /// them while this broker lives.
    unheld: Vec<(TopicPartition, Epoch)>,
}

fn plan(broker: &Broker, owners: &[PartitionOwner]) -> Plan {
    let membership = broker.membership();
    let me = membership.me().node_id;
    let my_id = me.to_string();
    let held: HashMap<TopicPartition, Epoch> = broker.engine().held().into_iter().collect();
    let live: Vec<String> = membership
        .members()
        .iter()
        .map(|m| m.node_id.to_string())
        .collect();
    let leaving = membership.leaving();
    let mut plan = Plan {
        claims: Vec::new(),
        releases: Vec::new(),
        lost: Vec::new(),
        unheld: Vec::new(),
    };
    for o in owners {
        if !broker.knows_partition(o.tp) {
            continue;
        }
        let desired = membership.desired_owner(o.tp);
        match held.get(&o.tp) {
            // A newer epoch than ours: someone claimed it (we were frozen or cut off).
            Some(&epoch) if o.epoch > epoch => plan.lost.push(o.tp),
            Some(_) if leaving || desired != Some(me) => plan.releases.push(o.tp),
            Some(_) => {}
            None if leaving || desired != Some(me) => {
                if o.owner.as_deref() == Some(my_id.as_str()) {
                    plan.unheld.push((o.tp, o.epoch));
                }
            }
            None => {
                let claimable = match &o.owner {
                    None => true,
                    Some(owner) => *owner == my_id || !live.contains(owner),
                };
                if claimable {
                    plan.claims.push((o.tp, o.epoch));
                }
            }
        }
    }
    plan
}

/// Flushes and releases partitions another broker should own.
async fn hand_over(broker: &Broker, tps: &[TopicPartition]) {
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    match broker.engine().release(tps, deadline).await {
        Ok(released) if !released.is_empty() => {
            tracing::info!(partitions = released.len(), "handed partitions over")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "hand-over failed; retrying next heartbeat"),
    }
}

/// Leaves the cluster cleanly (SIGTERM): marks this broker leaving, so no one places work on
/// it, hands every partition over, and removes its registration. Clients see only
/// NOT_LEADER_OR_FOLLOWER (retriable) meanwhile, and find the new owners in metadata.
pub async fn leave(broker: &Broker) {
    let membership = broker.membership();
    membership.set_leaving();
    let handing_over = Arc::new(tokio::sync::Mutex::new(()));
    if let Err(e) = tick(broker, &handing_over).await {
        tracing::warn!(error = %e, "could not announce leaving the cluster");
    }
    // Wait for the hand-over the tick may have started, then hand over whatever is left.
    let _guard = handing_over.lock().await;
    let held: Vec<TopicPartition> = broker
        .engine()
        .held()
        .into_iter()
        .map(|(tp, _)| tp)
        .collect();
    if !held.is_empty() {
        hand_over(broker, &held).await;
    }
    let left = broker.engine().held().len();
    if left > 0 {
        tracing::warn!(
            partitions = left,
            "leaving with partitions not handed over; their lease will expire"
        );
    }
    let id = membership.me().node_id.to_string();
    if let Err(e) = broker.catalog().deregister_broker(&id).await {
        tracing::warn!(error = %e, "could not deregister; the lease will expire instead");
    }
    tracing::info!("left the cluster");
}
