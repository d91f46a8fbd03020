//! Small newtypes for the numbers that flow through the engine.
//!
//! Offsets, partition numbers and owner epochs are all integers on the wire, and mixing them
//! up is an easy mistake that compiles. Wrapping each in its own type makes the compiler
//! catch it, and gives each a home for the arithmetic that makes sense for it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The position of a record in a partition's log. Offsets start at 0 and never repeat.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset `n` records after this one.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The index of a partition within its topic (0-based, as in Kafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub i32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An owner epoch: bumped every time a broker takes ownership of a partition. The catalog
/// refuses commits that carry an epoch other than the current one, which is what fences a
/// broker that lost ownership without knowing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub i64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A topic's identity: a UUID, as Kafka's topic ids are, so a deleted and re-created topic
/// of the same name never shares data with its predecessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub uuid::Uuid);

impl TopicId {
    /// A fresh random topic id.
    pub fn random() -> TopicId {
        TopicId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partition of a topic: the unit of ordering, ownership and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// The topic the partition belongs to.
    pub topic: TopicId,
    /// The partition's index within the topic.
    pub partition: PartitionId,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}
