//! Kafka's consumer protocol: the subscription and assignment bytes that consumers exchange
//! through a group's JoinGroup and SyncGroup, and the `range` assignor.
//!
//! Native consumers use these same encodings (protocol type `consumer`), so a native consumer
//! and a Kafka consumer can share one group, and `describe_group` can show any consumer's
//! partitions.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Versions written: the oldest every client reads.
const SUBSCRIPTION_VERSION: i16 = 0;
const ASSIGNMENT_VERSION: i16 = 0;

/// Subscription metadata for JoinGroup: the topics a member wants.
pub fn encode_subscription(topics: &[String]) -> Vec<u8> {
    let sub = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    // Encoding a plain struct into a growable buffer cannot fail.
    let _ = sub.encode(&mut buf, SUBSCRIPTION_VERSION);
    buf.to_vec()
}

/// The topics of a member's subscription metadata, if it is one.
pub fn decode_subscription(bytes: &[u8]) -> Option<Vec<String>> {
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16().clamp(0, 3);
    let sub = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(sub.topics.iter().map(|t| t.to_string()).collect())
}

/// Assignment bytes for SyncGroup.
pub fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Vec<u8> {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        partitions
            .iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(ASSIGNMENT_VERSION);
    let _ = assignment.encode(&mut buf, ASSIGNMENT_VERSION);
    buf.to_vec()
}

/// The `(topic, partition)`s in assignment bytes, if they are consumer-protocol bytes.
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    Some(
        a.assigned_partitions
            .iter()
            .flat_map(|tp| {
                tp.partitions
                    .iter()
                    .map(move |p| (tp.topic.as_str().to_string(), *p))
            })
            .collect(),
    )
}

/// Kafka's `range` assignor: for each topic, members subscribed to it (sorted by id) get
/// consecutive ranges of its partitions, the first ones one extra when it does not divide.
pub fn range_assign(
    members: &BTreeMap<String, Vec<String>>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &count) in partitions {
        let subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subscribed.is_empty() {
            continue;
        }
        let n = subscribed.len() as i32;
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribed.into_iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            if take > 0 {
                out.entry(member.clone())
                    .or_default()
                    .insert(topic.clone(), (next..next + take).collect());
            }
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        let sub = encode_subscription(&["a".into(), "b".into()]);
        assert_eq!(decode_subscription(&sub).unwrap(), vec!["a", "b"]);
        let mut parts = BTreeMap::new();
        parts.insert("a".to_string(), vec![0, 2]);
        let bytes = encode_assignment(&parts);
        assert_eq!(
            decode_assignment(&bytes).unwrap(),
            vec![("a".to_string(), 0), ("a".to_string(), 2)]
        );
        assert_eq!(decode_assignment(&[]).unwrap(), vec![]);
        assert!(decode_assignment(&[0]).is_none());
    }

    #[test]
    fn range_gives_the_first_members_the_extra_partitions() {
        let members: BTreeMap<String, Vec<String>> = [
            ("m1".to_string(), vec!["t".to_string()]),
            ("m2".to_string(), vec!["t".to_string()]),
        ]
        .into();
        let partitions: BTreeMap<String, i32> = [("t".to_string(), 5)].into();
        let a = range_assign(&members, &partitions);
        assert_eq!(a["m1"]["t"], vec![0, 1, 2]);
        assert_eq!(a["m2"]["t"], vec![3, 4]);
    }
}
