//! The consumer group coordinator: Kafka's classic group protocol, independent of the wire.
//!
//! A group moves through Kafka's states:
//!
//! ```text
//!   Empty ──join──► PreparingRebalance ──all joined / timeout──► CompletingRebalance
//!     ▲                   ▲                                             │ leader's SyncGroup
//!     └── last member ────┴──── join, leave, session expiry ◄── Stable ◄┘
//! ```
//!
//! - **Join.** Any join (a new member, a changed subscription) or departure starts a
//!   rebalance. The join phase ends when every member has rejoined, or when the largest
//!   rebalance timeout passes (members that did not rejoin are dropped). A group that was empty
//!   first waits `initial_rebalance_delay`, so members starting together land in one
//!   generation. The leader gets every member's metadata and computes the assignment on the
//!   client side (range, roundrobin, cooperative-sticky: the broker never looks inside).
//! - **Sync.** The leader's SyncGroup carries the assignment; every member's SyncGroup is
//!   answered with its share and the group is Stable.
//! - **Liveness.** A member that sends no heartbeat for its session timeout is dropped, which
//!   starts a rebalance. New members get their id first (KIP-394) and must rejoin with it.
//!   Static members (`group.instance.id`, KIP-345) keep their identity across restarts: a
//!   returning instance takes over its old membership without a rebalance when the group is
//!   stable and its subscription is unchanged, and fences the old member id.
//!
//! Membership lives in memory: as in Kafka, members rejoin after a coordinator restart.
//! Committed offsets live in the catalog and survive everything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use strata_storage::TopicPartition;
use strata_storage::catalog::{Catalog, CommittedOffset};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::BrokerError;

/// How often the coordinator checks timers (join deadlines, session expiry).
const TICK: Duration = Duration::from_millis(100);

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// How long a rebalance of an empty group waits for more members
    /// (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
    /// Smallest session timeout accepted (`group.min.session.timeout.ms`).
    pub min_session_timeout: Duration,
    /// Largest session timeout accepted (`group.max.session.timeout.ms`).
    pub max_session_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_millis(300),
            min_session_timeout: Duration::from_millis(1000),
            max_session_timeout: Duration::from_secs(1800),
        }
    }
}

/// A JoinGroup request, decoded.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The group.
    pub group: String,
    /// The member's id; empty for a new member.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// How long the member may take to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// Protocol type (`consumer` for consumers).
    pub protocol_type: String,
    /// Supported protocols (assignors) in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a new member first gets an id and must rejoin with it.
    pub require_known_member_id: bool,
    /// KIP-814 (JoinGroup v9+): the client understands `skip_assignment`, so a static leader
    /// that returns to a stable group need not cause a rebalance.
    pub supports_skip_assignment: bool,
}

/// A JoinGroup answer.
#[derive(Debug, Clone)]
pub struct JoinResponse {
    /// The new generation.
    pub generation: i32,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The protocol chosen for this generation.
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// For the leader only: every member, with its instance id and metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// KIP-814: a returning static leader gets the members (to watch their subscriptions)
    /// but must not compute a new assignment: the current one stands.
    pub skip_assignment: bool,
}

/// A SyncGroup request, decoded.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The group.
    pub group: String,
    /// The generation the member joined.
    pub generation: i32,
    /// The member.
    pub member_id: String,
    /// From the leader: each member's assignment.
    pub assignments: Vec<(String, Bytes)>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// `group.instance.id`, if static.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Current assignment.
    pub assignment: Bytes,
}

/// A group as DescribeGroups and ListGroups show it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// The group id.
    pub group: String,
    /// Kafka's state name: `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable` or
    /// `Dead` (no such group).
    pub state: &'static str,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen protocol.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

type JoinWaiter = oneshot::Sender<Result<JoinResponse, BrokerError>>;
type SyncWaiter = oneshot::Sender<Result<Bytes, BrokerError>>;

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    /// Order of first join: the oldest member leads when the leader leaves.
    joined_seq: u64,
    join_waiter: Option<JoinWaiter>,
    sync_waiter: Option<SyncWaiter>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out by KIP-394, waiting for their rejoin, with their expiry.
    pending: HashMap<String, Instant>,
    /// When the join phase ends at the latest.
    join_deadline: Instant,
    /// When the join phase may end at the earliest (the initial delay of an empty group).
    join_not_before: Instant,
}

impl Group {
    fn new() -> Group {
        let now = Instant::now();
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            join_deadline: now,
            join_not_before: now,
        }
    }

    /// The protocols every member supports, in `first`'s order of preference.
    fn common_protocol(&self, first: &[(String, Bytes)]) -> Option<String> {
        first
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned()
    }

    /// Starts (or restarts) the join phase. Members waiting for their sync are told to rejoin.
    fn prepare_rebalance(&mut self, initial_delay: Duration) {
        let now = Instant::now();
        let was_empty = self.state == State::Empty;
        self.state = State::PreparingRebalance;
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.join_deadline = now + longest;
        self.join_not_before = if was_empty { now + initial_delay } else { now };
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(Err(BrokerError::RebalanceInProgress));
            }
        }
    }

    /// A JoinGroup answer from the group as it stands, for a member that rejoins without a
    /// rebalance.
    fn current_join(&self, member_id: String) -> JoinResponse {
        JoinResponse {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id,
            members: Vec::new(),
            skip_assignment: false,
        }
    }

    /// Every member with its instance id and metadata for `protocol`: what a leader sees.
    fn roster(&self, protocol: &str) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| (id.clone(), m.instance_id.clone(), m.metadata(protocol)))
            .collect()
    }

    /// Parks `member_id`'s JoinGroup until the join phase ends, starting the phase if needed
    /// and ending it at once when everyone is in and the initial delay is over.
    fn await_join(&mut self, member_id: &str, initial_delay: Duration) -> Admitted {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(member_id)
            && let Some(old) = m.join_waiter.replace(tx)
        {
            let _ = old.send(Err(BrokerError::RebalanceInProgress));
        }
        if self.state != State::PreparingRebalance {
            self.prepare_rebalance(initial_delay);
        }
        if self.all_joined() && Instant::now() >= self.join_not_before {
            self.complete_join();
        }
        Admitted::Wait(rx)
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Ends the join phase: drops members that did not rejoin, starts the next generation and
    /// answers every waiting JoinGroup.
    fn complete_join(&mut self) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracing::info!(member = %id, "member did not rejoin in time; removed from group");
            self.members.remove(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.joined_seq)
                .map(|(id, _)| id.clone());
        }
        let leader = self.leader.clone().unwrap_or_default();
        let first = self
            .members
            .get(&leader)
            .map(|m| m.protocols.clone())
            .unwrap_or_default();
        let Some(protocol) = self.common_protocol(&first) else {
            // Every join is checked against the members present, so this needs members with
            // disjoint protocols to have joined in one phase; refuse them all.
            for m in self.members.values_mut() {
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(Err(BrokerError::InconsistentGroupProtocol(
                        "the members share no protocol".into(),
                    )));
                }
            }
            self.members.clear();
            self.become_empty();
            return;
        };
        self.protocol = protocol.clone();
        self.state = State::CompletingRebalance;
        let roster = self.roster(&protocol);
        let now = Instant::now();
        for (id, m) in self.members.iter_mut() {
            m.assignment = Bytes::new();
            m.last_heartbeat = now;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(Ok(JoinResponse {
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        roster.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                }));
            }
        }
    }

    fn become_empty(&mut self) {
        self.state = State::Empty;
        self.leader = None;
        self.protocol.clear();
    }

    /// Removes a member and rebalances whoever is left.
    fn remove_member(&mut self, id: &str, initial_delay: Duration) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(Err(BrokerError::UnknownMemberId(id.to_string())));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(Err(BrokerError::UnknownMemberId(id.to_string())));
            }
        }
        if self.members.is_empty() {
            self.generation += 1;
            self.become_empty();
        } else {
            self.prepare_rebalance(initial_delay);
        }
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), BrokerError> {
        if !self.members.contains_key(member_id) {
            return Err(BrokerError::UnknownMemberId(member_id.to_string()));
        }
        if generation != self.generation {
            return Err(BrokerError::IllegalGeneration {
                got: generation,
                current: self.generation,
            });
        }
        Ok(())
    }
}

/// The coordinator of every group on this broker. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    groups: Arc<Mutex<HashMap<String, Group>>>,
    catalog: Arc<dyn Catalog>,
    config: GroupConfig,
    seq: Arc<std::sync::atomic::AtomicU64>,
    /// Says which groups this broker coordinates; requests for others get NOT_COORDINATOR.
    membership: Arc<crate::cluster::Membership>,
}

impl Coordinator {
    /// A coordinator committing offsets to `catalog`. Starts the timer task that ends join
    /// phases and expires silent members.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        config: GroupConfig,
        membership: Arc<crate::cluster::Membership>,
    ) -> Coordinator {
        let c = Coordinator {
            groups: Arc::new(Mutex::new(HashMap::new())),
            catalog,
            config,
            seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            membership,
        };
        let weak = Arc::downgrade(&c.groups);
        let delay = c.config.initial_rebalance_delay;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            while let Some(groups) = weak.upgrade() {
                tick.tick().await;
                let mut groups = groups.lock().unwrap_or_else(|p| p.into_inner());
                for (name, group) in groups.iter_mut() {
                    on_tick(name, group, delay);
                }
            }
        });
        c
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a request for a group another broker coordinates.
    fn check_coordinator(&self, group: &str) -> Result<(), BrokerError> {
        let coordinator = self.membership.coordinator(group);
        if coordinator == self.membership.me().node_id {
            Ok(())
        } else {
            Err(BrokerError::NotCoordinator {
                group: group.to_string(),
                coordinator,
            })
        }
    }

    /// Drops the in-memory state of groups this broker no longer coordinates (a broker
    /// joined and took them). Their members get NOT_COORDINATOR, find the new coordinator and
    /// rejoin there; committed offsets live in the catalog and move with nothing.
    pub fn forget_unless(&self, mine: impl Fn(&str) -> bool) {
        let mut groups = self.lock();
        let before = groups.len();
        groups.retain(|name, _| mine(name));
        if groups.len() < before {
            tracing::info!(
                groups = before - groups.len(),
                "another broker coordinates these groups now"
            );
        }
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{prefix}-{}", uuid::Uuid::new_v4())
    }

    /// JoinGroup: waits until the join phase ends (bounded by the rebalance timeout).
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, BrokerError> {
        if req.group.is_empty() {
            return Err(BrokerError::InvalidGroupId);
        }
        self.check_coordinator(&req.group)?;
        let (min, max) = (
            self.config.min_session_timeout,
            self.config.max_session_timeout,
        );
        if req.session_timeout < min || req.session_timeout > max {
            return Err(BrokerError::InvalidSessionTimeout {
                got: req.session_timeout.as_millis() as i64,
                min: min.as_millis() as i64,
                max: max.as_millis() as i64,
            });
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(BrokerError::InconsistentGroupProtocol(
                "a member must name a protocol type and at least one protocol".into(),
            ));
        }
        let wait = req.rebalance_timeout.max(req.session_timeout) + Duration::from_secs(5);
        let rx = {
            let mut groups = self.lock();
            let group = groups.entry(req.group.clone()).or_insert_with(Group::new);
            match self.admit(group, &req)? {
                Admitted::Immediate(resp) => return Ok(resp),
                Admitted::Wait(rx) => rx,
            }
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(BrokerError::RebalanceInProgress),
        }
    }

    /// Decides who the joining member is and enters it into the join phase.
    fn admit(&self, group: &mut Group, req: &JoinRequest) -> Result<Admitted, BrokerError> {
        if !group.members.is_empty() {
            if group.protocol_type != req.protocol_type {
                return Err(BrokerError::InconsistentGroupProtocol(format!(
                    "group uses protocol type '{}', not '{}'",
                    group.protocol_type, req.protocol_type
                )));
            }
            let others_share = req.protocols.iter().any(|(name, _)| {
                group
                    .members
                    .iter()
                    .filter(|(id, _)| **id != req.member_id)
                    .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
            });
            if !others_share {
                return Err(BrokerError::InconsistentGroupProtocol(
                    "none of the member's protocols is supported by every other member".into(),
                ));
            }
        }
        let static_owner = req.instance_id.as_ref().and_then(|inst| {
            group
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(inst))
                .map(|(id, _)| id.clone())
        });
        let member_id = if req.member_id.is_empty() {
            match (&static_owner, &req.instance_id) {
                (Some(old), _) => return Ok(self.replace_static(group, old, req)),
                (None, Some(_)) => self.new_member_id(&req.client_id),
                (None, None) if req.require_known_member_id => {
                    let id = self.new_member_id(&req.client_id);
                    group
                        .pending
                        .insert(id.clone(), Instant::now() + req.session_timeout);
                    return Err(BrokerError::MemberIdRequired(id));
                }
                (None, None) => self.new_member_id(&req.client_id),
            }
        } else {
            if let Some(old) = &static_owner
                && *old != req.member_id
            {
                return Err(BrokerError::FencedInstanceId(
                    req.instance_id.clone().unwrap_or_default(),
                ));
            }
            if !group.members.contains_key(&req.member_id)
                && group.pending.remove(&req.member_id).is_none()
            {
                return Err(BrokerError::UnknownMemberId(req.member_id.clone()));
            }
            req.member_id.clone()
        };
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_heartbeat: Instant::now(),
                joined_seq: seq,
                join_waiter: None,
                sync_waiter: None,
            });
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.protocols = req.protocols.clone();
        member.last_heartbeat = Instant::now();
        group.protocol_type = req.protocol_type.clone();
        Ok(group.await_join(&member_id, self.config.initial_rebalance_delay))
    }

    /// A static member returning with a new process: it takes over the old membership under a
    /// new id (fencing the old one). In a stable group with an unchanged subscription no
    /// rebalance is needed — for the leader too when its client speaks KIP-814, which gets the
    /// members with `skip_assignment` — otherwise it joins like anyone else.
    fn replace_static(&self, group: &mut Group, old: &str, req: &JoinRequest) -> Admitted {
        let new_id = self.new_member_id(&req.client_id);
        let Some(mut member) = group.members.remove(old) else {
            return Admitted::Immediate(group.current_join(new_id));
        };
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(Err(BrokerError::FencedInstanceId(old.to_string())));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(Err(BrokerError::FencedInstanceId(old.to_string())));
        }
        let unchanged = member.protocols == req.protocols;
        member.protocols = req.protocols.clone();
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.last_heartbeat = Instant::now();
        let was_leader = group.leader.as_deref() == Some(old);
        if was_leader {
            group.leader = Some(new_id.clone());
        }
        group.members.insert(new_id.clone(), member);
        if group.state == State::Stable && unchanged {
            if !was_leader {
                return Admitted::Immediate(group.current_join(new_id));
            }
            if req.supports_skip_assignment {
                tracing::info!(group = %req.group, member = %new_id, "static leader returned; assignment kept (KIP-814)");
                let mut answer = group.current_join(new_id);
                answer.members = group.roster(&group.protocol);
                answer.skip_assignment = true;
                return Admitted::Immediate(answer);
            }
        }
        group.await_join(&new_id, self.config.initial_rebalance_delay)
    }

    /// SyncGroup: the leader hands out assignments; everyone gets theirs.
    pub async fn sync(&self, req: SyncRequest) -> Result<Bytes, BrokerError> {
        self.check_coordinator(&req.group)?;
        let rx = {
            let mut groups = self.lock();
            let group = groups
                .get_mut(&req.group)
                .ok_or_else(|| BrokerError::UnknownMemberId(req.member_id.clone()))?;
            group.check_member(&req.member_id, req.generation)?;
            match group.state {
                State::PreparingRebalance => return Err(BrokerError::RebalanceInProgress),
                State::Empty => return Err(BrokerError::UnknownMemberId(req.member_id)),
                State::Stable => {
                    return Ok(group.members[&req.member_id].assignment.clone());
                }
                State::CompletingRebalance => {}
            }
            if group.leader.as_deref() == Some(req.member_id.as_str()) {
                let mut given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                for (id, m) in group.members.iter_mut() {
                    m.assignment = given.remove(id).unwrap_or_default();
                    m.last_heartbeat = Instant::now();
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(Ok(m.assignment.clone()));
                    }
                }
                group.state = State::Stable;
                tracing::info!(group = %req.group, generation = group.generation, members = group.members.len(), "group is stable");
                return Ok(group.members[&req.member_id].assignment.clone());
            }
            let (tx, rx) = oneshot::channel();
            if let Some(m) = group.members.get_mut(&req.member_id) {
                m.sync_waiter = Some(tx);
                m.last_heartbeat = Instant::now();
            }
            rx
        };
        let wait = self
            .config
            .max_session_timeout
            .min(Duration::from_secs(300));
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(BrokerError::RebalanceInProgress),
        }
    }

    /// Heartbeat: keeps a member alive and tells it when to rejoin.
    pub fn heartbeat(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), BrokerError> {
        self.check_coordinator(group)?;
        let mut groups = self.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| BrokerError::UnknownMemberId(member_id.to_string()))?;
        let Some(m) = g.members.get_mut(member_id) else {
            return Err(BrokerError::UnknownMemberId(member_id.to_string()));
        };
        m.last_heartbeat = Instant::now();
        if g.state == State::PreparingRebalance {
            return Err(BrokerError::RebalanceInProgress);
        }
        g.check_member(member_id, generation)
    }

    /// LeaveGroup for each `(member id, instance id)`; an empty member id with an instance id
    /// names the static member holding it.
    pub fn leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), BrokerError>> {
        if self.check_coordinator(group).is_err() {
            return members
                .iter()
                .map(|_| self.check_coordinator(group))
                .collect();
        }
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return members
                .iter()
                .map(|(id, _)| Err(BrokerError::UnknownMemberId(id.clone())))
                .collect();
        };
        let delay = self.config.initial_rebalance_delay;
        members
            .iter()
            .map(|(id, instance)| {
                let id = match instance {
                    Some(inst) if id.is_empty() => g
                        .members
                        .iter()
                        .find(|(_, m)| m.instance_id.as_ref() == Some(inst))
                        .map(|(id, _)| id.clone())
                        .ok_or_else(|| BrokerError::UnknownMemberId(inst.clone()))?,
                    _ => id.clone(),
                };
                if !g.members.contains_key(&id) {
                    return Err(BrokerError::UnknownMemberId(id));
                }
                tracing::info!(group, member = %id, "member left the group");
                g.remove_member(&id, delay);
                Ok(())
            })
            .collect()
    }

    /// Checks that an offset commit may be made: by a member of the current generation, or
    /// (generation -1, no member id) by a client that manages its own partitions, as long as
    /// the group has no members. As in Kafka, a member may commit while the group prepares a
    /// rebalance (consumers commit in their revocation callback, which runs exactly then) but
    /// not while assignments are being handed out. A commit counts as a heartbeat.
    pub fn check_commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), BrokerError> {
        if group.is_empty() {
            return Err(BrokerError::InvalidGroupId);
        }
        self.check_coordinator(group)?;
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return if generation < 0 && member_id.is_empty() {
                Ok(())
            } else {
                Err(BrokerError::IllegalGeneration {
                    got: generation,
                    current: -1,
                })
            };
        };
        if generation < 0 && member_id.is_empty() {
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(BrokerError::UnknownMemberId(String::new()))
            };
        }
        g.check_member(member_id, generation)?;
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_heartbeat = Instant::now();
        }
        match g.state {
            State::CompletingRebalance => Err(BrokerError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Stores committed offsets in the catalog.
    pub async fn commit(
        &self,
        group: &str,
        offsets: &[CommittedOffset],
    ) -> Result<(), BrokerError> {
        Ok(self.catalog.commit_offsets(group, offsets).await?)
    }

    /// The group's committed offsets.
    pub async fn committed(&self, group: &str) -> Result<Vec<CommittedOffset>, BrokerError> {
        Ok(self.catalog.committed_offsets(group).await?)
    }

    /// Every group: those with members here and those with committed offsets.
    pub async fn list(&self) -> Result<Vec<GroupDescription>, BrokerError> {
        let mut out: BTreeMap<String, GroupDescription> = BTreeMap::new();
        for name in self.catalog.groups_with_offsets().await? {
            out.insert(name.clone(), empty_description(&name, "Empty"));
        }
        for (name, g) in self.lock().iter() {
            out.insert(name.clone(), describe(name, g));
        }
        Ok(out.into_values().collect())
    }

    /// One group's state and members; a group never seen is `Dead`, as in Kafka.
    pub async fn describe(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        if let Some(g) = self.lock().get(group) {
            return Ok(describe(group, g));
        }
        let known = self.catalog.groups_with_offsets().await?;
        let state = if known.iter().any(|g| g == group) {
            "Empty"
        } else {
            "Dead"
        };
        Ok(empty_description(group, state))
    }

    /// Deletes an empty group and its committed offsets.
    pub async fn delete(&self, group: &str) -> Result<(), BrokerError> {
        let in_memory = {
            let mut groups = self.lock();
            match groups.get(group) {
                Some(g) if !g.members.is_empty() => {
                    return Err(BrokerError::NonEmptyGroup(group.to_string()));
                }
                Some(_) => {
                    groups.remove(group);
                    true
                }
                None => false,
            }
        };
        let deleted = self.catalog.delete_offsets(group, None).await?;
        if !in_memory && deleted == 0 {
            return Err(BrokerError::GroupIdNotFound(group.to_string()));
        }
        Ok(())
    }

    /// Deletes a group's offsets for some partitions (OffsetDelete). Refused while the group
    /// has members.
    pub async fn delete_offsets(
        &self,
        group: &str,
        tps: &[TopicPartition],
    ) -> Result<(), BrokerError> {
        if self
            .lock()
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
        {
            return Err(BrokerError::NonEmptyGroup(group.to_string()));
        }
        self.catalog.delete_offsets(group, Some(tps)).await?;
        Ok(())
    }
}

enum Admitted {
    Immediate(JoinResponse),
    Wait(oneshot::Receiver<Result<JoinResponse, BrokerError>>),
}

fn describe(name: &str, g: &Group) -> GroupDescription {
    GroupDescription {
        group: name.to_string(),
        state: g.state.name(),
        protocol_type: g.protocol_type.clone(),
        protocol: g.protocol.clone(),
        members: g
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata(&g.protocol),
                assignment: m.assignment.clone(),
            })
            .collect(),
    }
}

fn empty_description(name: &str, state: &'static str) -> GroupDescription {
    GroupDescription {
        group: name.to_string(),
        state,
        protocol_type: String::new(),
        protocol: String::new(),
        members: Vec::new(),
    }
}

/// Timers of one group: pending ids expire, silent members are dropped, the join phase ends.
fn on_tick(name: &str, g: &mut Group, initial_delay: Duration) {
    let now = Instant::now();
    g.pending.retain(|_, expiry| *expiry > now);
    // A member parked in JoinGroup is waiting on us, not silent; everyone else must heartbeat.
    let expired: Vec<String> = g
        .members
        .iter()
        .filter(|(_, m)| {
            m.join_waiter.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        tracing::info!(group = name, member = %id, "session timed out; removing member");
        g.remove_member(&id, initial_delay);
    }
    if g.state == State::PreparingRebalance
        && ((g.all_joined() && now >= g.join_not_before) || now >= g.join_deadline)
    {
        g.complete_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_storage::catalog::SqlCatalog;

    async fn coordinator() -> (Coordinator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/c.db", dir.path().display());
        let catalog: Arc<dyn Catalog> = Arc::new(SqlCatalog::connect(&url).await.unwrap());
        let config = GroupConfig {
            initial_rebalance_delay: Duration::from_millis(200),
            ..GroupConfig::default()
        };
        let me = crate::cluster::Member {
            node_id: 1,
            kafka: ("127.0.0.1".into(), 9092),
            quic: "127.0.0.1:9093".into(),
            http: "127.0.0.1:9094".into(),
            zone: None,
            heartbeat_ms: 0,
            leaving: false,
        };
        let membership = Arc::new(crate::cluster::Membership::new(me, Duration::from_secs(10)));
        (Coordinator::new(catalog, config, membership), dir)
    }

    fn join(member: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
            supports_skip_assignment: true,
        }
    }

    async fn new_member(c: &Coordinator) -> String {
        match c.join(join("", &["range"])).await {
            Err(BrokerError::MemberIdRequired(id)) => id,
            other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn two_members_join_sync_and_rebalance_on_leave() {
        let (c, _dir) = coordinator().await;
        let (a, b) = (new_member(&c).await, new_member(&c).await);
        let (ja, jb) = tokio::join!(c.join(join(&a, &["range"])), c.join(join(&b, &["range"])));
        let (ja, jb) = (ja.unwrap(), jb.unwrap());
        assert_eq!((ja.generation, jb.generation), (1, 1));
        assert_eq!(ja.leader, jb.leader);
        let (leader, follower) = if ja.leader == a { (ja, jb) } else { (jb, ja) };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        assert_eq!(leader.protocol, "range");

        let sync = |m: &str, assignments: Vec<(String, Bytes)>| SyncRequest {
            group: "g".into(),
            generation: 1,
            member_id: m.into(),
            assignments,
        };
        let follower_sync = c.sync(sync(&follower.member_id, vec![]));
        let leader_sync = c.sync(sync(
            &leader.member_id,
            vec![
                (leader.member_id.clone(), Bytes::from_static(b"L")),
                (follower.member_id.clone(), Bytes::from_static(b"F")),
            ],
        ));
        let (f, l) = tokio::join!(follower_sync, leader_sync);
        assert_eq!(f.unwrap(), Bytes::from_static(b"F"));
        assert_eq!(l.unwrap(), Bytes::from_static(b"L"));
        assert_eq!(c.describe("g").await.unwrap().state, "Stable");
        c.heartbeat("g", 1, &leader.member_id).unwrap();
        assert!(matches!(
            c.heartbeat("g", 0, &leader.member_id),
            Err(BrokerError::IllegalGeneration { .. })
        ));
        assert!(matches!(
            c.heartbeat("g", 1, "nobody"),
            Err(BrokerError::UnknownMemberId(_))
        ));

        // The follower leaves: the leader is told to rejoin and gets generation 2 alone.
        c.leave("g", &[(follower.member_id.clone(), None)])
            .into_iter()
            .for_each(|r| r.unwrap());
        assert!(matches!(
            c.heartbeat("g", 1, &leader.member_id),
            Err(BrokerError::RebalanceInProgress)
        ));
        let again = c.join(join(&leader.member_id, &["range"])).await.unwrap();
        assert_eq!(again.generation, 2);
        assert_eq!(again.members.len(), 1);
    }

    /// KIP-814: a static leader that restarts into a stable group keeps the assignment: it
    /// gets the members with `skip_assignment`, no new generation, and its old assignment on
    /// sync. A client without KIP-814 makes the group rebalance instead.
    #[tokio::test]
    async fn a_returning_static_leader_skips_the_assignment() {
        let (c, _dir) = coordinator().await;
        let mut first = join("", &["range"]);
        first.instance_id = Some("host-1".into());
        let joined = c.join(first.clone()).await.unwrap();
        assert_eq!(
            (joined.generation, joined.leader.clone()),
            (1, joined.member_id.clone())
        );
        let sync = |m: &str, assignments: Vec<(String, Bytes)>| SyncRequest {
            group: "g".into(),
            generation: 1,
            member_id: m.into(),
            assignments,
        };
        let mine = Bytes::from_static(b"p0,p1");
        c.sync(sync(
            &joined.member_id,
            vec![(joined.member_id.clone(), mine.clone())],
        ))
        .await
        .unwrap();

        // The same instance restarts: a new member id, the same generation, no rebalance.
        let back = c.join(first.clone()).await.unwrap();
        assert_ne!(back.member_id, joined.member_id);
        assert_eq!(back.generation, 1);
        assert_eq!(back.leader, back.member_id);
        assert!(back.skip_assignment);
        assert_eq!(back.members.len(), 1);
        assert_eq!(c.describe("g").await.unwrap().state, "Stable");
        assert_eq!(c.sync(sync(&back.member_id, vec![])).await.unwrap(), mine);
        assert!(matches!(
            c.heartbeat("g", 1, &joined.member_id),
            Err(BrokerError::UnknownMemberId(_))
        ));

        // Without KIP-814 the returning leader rebalances.
        let mut old_client = first;
        old_client.supports_skip_assignment = false;
        let again = c.join(old_client).await.unwrap();
        assert_eq!(again.generation, 2);
        assert!(!again.skip_assignment);
    }

    #[tokio::test]
    async fn silent_member_is_expelled_after_its_session_timeout() {
        let (c, _dir) = coordinator().await;
        let a = new_member(&c).await;
        let mut req = join(&a, &["range"]);
        req.session_timeout = Duration::from_secs(1);
        let j = c.join(req).await.unwrap();
        c.sync(SyncRequest {
            group: "g".into(),
            generation: j.generation,
            member_id: a.clone(),
            assignments: vec![(a.clone(), Bytes::from_static(b"x"))],
        })
        .await
        .unwrap();
        // Well past the 1 s session (timers tick every 100 ms).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let d = c.describe("g").await.unwrap();
        assert_eq!(d.state, "Empty");
        assert!(d.members.is_empty());
    }

    #[tokio::test]
    async fn incompatible_protocols_and_bad_timeouts_are_refused() {
        let (c, _dir) = coordinator().await;
        let a = new_member(&c).await;
        c.join(join(&a, &["range"])).await.unwrap();
        let mut other = join("", &["roundrobin"]);
        other.require_known_member_id = false;
        assert!(matches!(
            c.join(other).await,
            Err(BrokerError::InconsistentGroupProtocol(_))
        ));
        let mut short = join("", &["range"]);
        short.session_timeout = Duration::from_millis(10);
        assert!(matches!(
            c.join(short).await,
            Err(BrokerError::InvalidSessionTimeout { .. })
        ));
        assert!(matches!(
            c.join(join("made-up", &["range"])).await,
            Err(BrokerError::UnknownMemberId(_))
        ));
    }

    #[tokio::test]
    async fn commits_are_checked_against_the_generation() {
        let (c, _dir) = coordinator().await;
        // A client managing its own partitions may commit to a group with no members.
        c.check_commit("solo", -1, "").unwrap();
        let a = new_member(&c).await;
        let j = c.join(join(&a, &["range"])).await.unwrap();
        // Assignments are being handed out: no commits until the group is stable.
        assert!(matches!(
            c.check_commit("g", j.generation, &a),
            Err(BrokerError::RebalanceInProgress)
        ));
        c.sync(SyncRequest {
            group: "g".into(),
            generation: j.generation,
            member_id: a.clone(),
            assignments: vec![],
        })
        .await
        .unwrap();
        c.check_commit("g", j.generation, &a).unwrap();
        // A joining member starts a rebalance; the current member may still commit (its
        // revocation callback does exactly that).
        let b = new_member(&c).await;
        let c2 = c.clone();
        let joining = tokio::spawn(async move { c2.join(join(&b, &["range"])).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.check_commit("g", j.generation, &a).unwrap();
        joining.abort();
        assert!(matches!(
            c.check_commit("g", j.generation + 1, &a),
            Err(BrokerError::IllegalGeneration { .. })
        ));
        assert!(matches!(
            c.check_commit("g", -1, ""),
            Err(BrokerError::UnknownMemberId(_))
        ));
        assert!(matches!(
            c.delete("g").await,
            Err(BrokerError::NonEmptyGroup(_))
        ));
        assert!(matches!(
            c.delete("never").await,
            Err(BrokerError::GroupIdNotFound(_))
        ));
    }
}
