//! The cluster: brokers sharing one catalog and one bucket, each partition owned by one.
//!
//! Brokers hold nothing that matters beyond their WAL window, so membership moves only
//! ownership, never bytes. The protocol, all of it through the catalog:
//!
//! - **Lease.** Every broker re-registers each heartbeat interval ([`reconcile`]). A broker
//!   whose last heartbeat is older than the lease is dead to the others. A broker stops
//!   acknowledging appends a safety margin *before* its own lease could have expired
//!   ([`strata_storage::Engine::renew_lease`]), so a frozen or cut-off broker has stopped
//!   writing before anyone takes its partitions.
//! - **Placement.** Each partition's desired owner is chosen by [rendezvous] hashing over the
//!   live brokers that are not leaving; all brokers seeing the same members agree, and a
//!   join or leave moves only the joiner's or leaver's share. Group coordinators are placed
//!   the same way.
//! - **Claim.** A broker claims a partition it should own when the catalog shows it released,
//!   owned by a dead broker, or owned by itself — conditionally on the epoch it read, so of
//!   two brokers racing for it exactly one wins. A claim bumps the epoch.
//! - **Hand-over.** A broker that should no longer own a partition (a broker joined, or it is
//!   leaving) refuses new appends to it, flushes what it accepted, and releases it at that
//!   epoch; the new owner then claims it at the next epoch.
//! - **Fencing.** Every flush commit is conditional on the epoch; a broker that lost a
//!   partition finds its commit refused, drops the partition and answers its waiting
//!   producers NOT_LEADER_OR_FOLLOWER, which makes them retry at the new owner.

pub mod peer;
pub mod reconcile;
pub mod rendezvous;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use strata_storage::catalog::{BrokerInfo, PartitionOwner};
use strata_storage::{Epoch, TopicPartition};

/// A broker of the cluster, as clients are told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id (Kafka's broker id).
    pub node_id: i32,
    /// Kafka host and port.
    pub kafka: (String, u16),
    /// QUIC `host:port`.
    pub quic: String,
    /// HTTP `host:port`.
    pub http: String,
    /// Its zone (Kafka's rack).
    pub zone: Option<String>,
    /// Last heartbeat, ms since the Unix epoch.
    pub heartbeat_ms: i64,
    /// Shutting down: still holds its partitions until it has released them.
    pub leaving: bool,
}

impl Member {
    /// The catalog row for this member.
    pub fn to_info(&self) -> BrokerInfo {
        BrokerInfo {
            id: self.node_id.to_string(),
            kafka_addr: format!("{}:{}", self.kafka.0, self.kafka.1),
            quic_addr: self.quic.clone(),
            http_addr: self.http.clone(),
            zone: self.zone.clone(),
            heartbeat_ms: self.heartbeat_ms,
            leaving: self.leaving,
        }
    }

    /// The member a catalog row describes; `None` for a row this build cannot read.
    pub fn from_info(info: &BrokerInfo) -> Option<Member> {
        let (host, port) = info.kafka_addr.rsplit_once(':')?;
        Some(Member {
            node_id: info.id.parse().ok()?,
            kafka: (host.to_string(), port.parse().ok()?),
            quic: info.quic_addr.clone(),
            http: info.http_addr.clone(),
            zone: info.zone.clone(),
            heartbeat_ms: info.heartbeat_ms,
            leaving: info.leaving,
        })
    }
}

/// Who owns a partition now, as of the last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// The owner's node id, if any.
    pub owner: Option<i32>,
    /// The owner epoch.
    pub epoch: Epoch,
}

#[derive(Default)]
struct View {
    /// Live members (heartbeat within the lease), by node id.
    members: Vec<Member>,
    owners: HashMap<TopicPartition, Ownership>,
}

/// What this broker knows of the cluster, refreshed every heartbeat by [`reconcile`]. Until
/// the first refresh, it knows only itself.
pub struct Membership {
    me: Member,
    lease: Duration,
    leaving: AtomicBool,
    view: RwLock<Arc<View>>,
}

/// The rendezvous key of a partition.
fn partition_key(tp: TopicPartition) -> String {
    format!("{}/{}", tp.topic, tp.partition.0)
}

impl Membership {
    /// A membership for this broker (`me`) with the given lease.
    pub fn new(me: Member, lease: Duration) -> Membership {
        let view = View {
            members: vec![me.clone()],
            owners: HashMap::new(),
        };
        Membership {
            me,
            lease,
            leaving: AtomicBool::new(false),
            view: RwLock::new(Arc::new(view)),
        }
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This broker.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// How long a heartbeat keeps a broker alive.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether this broker is shutting down.
    pub fn leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    pub(crate) fn set_leaving(&self) {
        self.leaving.store(true, Ordering::SeqCst);
    }

    /// The live brokers, this one always among them, by node id.
    pub fn members(&self) -> Vec<Member> {
        self.view().members.clone()
    }

    /// A live broker by node id.
    pub fn member(&self, node_id: i32) -> Option<Member> {
        self.view()
            .members
            .iter()
            .find(|m| m.node_id == node_id)
            .cloned()
    }

    /// Ids (as strings, the rendezvous input) of the brokers that take new work.
    fn candidates(view: &View) -> Vec<String> {
        view.members
            .iter()
            .filter(|m| !m.leaving)
            .map(|m| m.node_id.to_string())
            .collect()
    }

    fn place(view: &View, key: &str) -> Option<i32> {
        let ids = Membership::candidates(view);
        rendezvous::owner(key, ids.iter().map(String::as_str)).and_then(|id| id.parse().ok())
    }

    /// The broker that should own `tp` among the live ones that are not leaving.
    pub fn desired_owner(&self, tp: TopicPartition) -> Option<i32> {
        Membership::place(&self.view(), &partition_key(tp))
    }

    /// The broker clients should send `tp`'s writes to: its owner while that broker is alive
    /// (even while it hands the partition over), else the broker that will claim it.
    pub fn leader(&self, tp: TopicPartition) -> i32 {
        let view = self.view();
        let live_owner = view
            .owners
            .get(&tp)
            .and_then(|o| o.owner)
            .filter(|id| view.members.iter().any(|m| m.node_id == *id));
        live_owner
            .or_else(|| Membership::place(&view, &partition_key(tp)))
            .unwrap_or(self.me.node_id)
    }

    /// Owner and epoch of every partition as of the last heartbeat.
    pub fn ownership(&self) -> HashMap<TopicPartition, Ownership> {
        self.view().owners.clone()
    }

    /// The broker that stands in as Kafka's controller, and does the cluster-wide chores
    /// (garbage collection): the live broker with the lowest node id.
    pub fn controller(&self) -> i32 {
        self.view()
            .members
            .iter()
            .map(|m| m.node_id)
            .min()
            .unwrap_or(self.me.node_id)
    }

    /// The broker that coordinates group `group`.
    pub fn coordinator(&self, group: &str) -> i32 {
        Membership::place(&self.view(), &format!("group:{group}")).unwrap_or(self.me.node_id)
    }

    /// Whether this broker coordinates group `group`.
    pub fn coordinates(&self, group: &str) -> bool {
        self.coordinator(group) == self.me.node_id
    }

    /// Replaces the view after a heartbeat.
    pub(crate) fn publish(&self, mut members: Vec<Member>, owners: &[PartitionOwner]) {
        let mut me = members
            .iter()
            .find(|m| m.node_id == self.me.node_id)
            .cloned()
            .unwrap_or_else(|| self.me.clone());
        me.leaving = self.leaving();
        members.retain(|m| m.node_id != me.node_id);
        members.push(me);
        members.sort_by_key(|m| m.node_id);
        let owners = owners
            .iter()
            .map(|o| {
                (
                    o.tp,
                    Ownership {
                        owner: o.owner.as_deref().and_then(|id| id.parse().ok()),
                        epoch: o.epoch,
                    },
                )
            })
            .collect();
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View { members, owners });
    }
}
