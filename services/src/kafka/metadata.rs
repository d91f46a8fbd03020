//! ApiVersions and Metadata: how a client learns what this broker speaks and what it holds.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{ConnError, Req, SUPPORTED, codec, errors};
use crate::broker::{Broker, BrokerError, Topic};
use strata_storage::catalog::tp;

fn api_list() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The ApiVersions answer. It carries no tagged fields (no feature flags): librdkafka 2.0.2,
/// which Debian's kcat uses, mis-parses an ApiVersions v3 response whose tagged fields are
/// not empty.
pub fn api_versions(req: Req) -> Result<Bytes, ConnError> {
    let body = ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(api_list());
    req.encode(&body)
}

/// The answer to an ApiVersions request of a version this broker does not speak: a v0
/// response with UNSUPPORTED_VERSION and the versions it does, as Kafka sends.
pub fn api_versions_unsupported(req: Req) -> Result<Bytes, ConnError> {
    tracing::info!(peer = %req.peer, version = req.version, "ApiVersions version newer than this broker speaks; answering in v0");
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_list());
    codec::encode_response(req.api, 0, req.correlation_id, &body)
}

/// A partition's leader is its owner; every live broker can serve its reads (from the
/// object store), so all of them are listed as replicas and in sync, the leader first. That
/// is what lets a consumer fetch from a broker in its own zone (KIP-392).
fn topic_entry(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let members: Vec<BrokerId> = broker
        .membership()
        .members()
        .iter()
        .map(|m| BrokerId(m.node_id))
        .collect();
    let partitions = (0..topic.meta.partitions)
        .map(|p| {
            let leader = BrokerId(broker.membership().leader(tp(topic.meta.id, p)));
            let mut replicas = vec![leader];
            replicas.extend(members.iter().copied().filter(|m| *m != leader));
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(leader)
                .with_leader_epoch(super::log::LEADER_EPOCH)
                .with_replica_nodes(replicas.clone())
                .with_isr_nodes(replicas)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            topic.meta.name.clone(),
        ))))
        .with_topic_id(topic.meta.id.0)
        .with_partitions(partitions)
}

fn error_entry(name: Option<TopicName>, e: &BrokerError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_error_code(errors::code(e))
}

/// Metadata: this broker, and the topics asked for (all when the list is null, or empty in
/// v0). Unknown topics are created when both the request and the broker allow it.
pub async fn metadata(
    broker: &Broker,
    req: Req,
    request: MetadataRequest,
) -> Result<Bytes, ConnError> {
    // v0 has no null list: an empty one means every topic.
    let wanted = match request.topics {
        Some(t) if !(t.is_empty() && req.version == 0) => Some(t),
        _ => None,
    };
    let auto_create = req.version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match wanted {
        None => {
            for t in broker.topics() {
                topics.push(topic_entry(broker, &t));
            }
        }
        Some(wanted) => {
            for w in wanted {
                let entry = match &w.name {
                    Some(name) => match broker.topic(name.as_str(), auto_create).await {
                        Ok(t) => topic_entry(broker, &t),
                        Err(e) => error_entry(Some(name.clone()), &e),
                    },
                    None => match broker
                        .topics()
                        .into_iter()
                        .find(|t| t.meta.id.0 == w.topic_id)
                    {
                        Some(t) => topic_entry(broker, &t),
                        None => MetadataResponseTopic::default()
                            .with_topic_id(w.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                };
                topics.push(entry);
            }
        }
    }
    let brokers = broker
        .membership()
        .members()
        .into_iter()
        .map(|m| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(m.node_id))
                .with_host(StrBytes::from_string(m.kafka.0))
                .with_port(i32::from(m.kafka.1))
                .with_rack(m.zone.map(StrBytes::from_string))
        })
        .collect();
    let body = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_static_str("strata")))
        .with_controller_id(BrokerId(controller(broker)))
        .with_topics(topics);
    req.encode(&body)
}

/// The broker named as controller: Strata has none (the catalog is the controller), but
/// admin tools expect a live broker id, so the lowest live one stands in.
fn controller(broker: &Broker) -> i32 {
    broker.membership().controller()
}

/// DescribeCluster (KIP-700): the cluster id, the controller and the brokers, as admin tools
/// show them.
pub fn describe_cluster(
    broker: &Broker,
    req: Req,
    request: kafka_protocol::messages::DescribeClusterRequest,
) -> Result<Bytes, ConnError> {
    use kafka_protocol::messages::DescribeClusterResponse;
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    // Endpoint type 1 is brokers; 2 (controllers) is for KRaft controller quorums, which a
    // Strata cluster does not have.
    if request.endpoint_type != 1 {
        let body = DescribeClusterResponse::default()
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "Strata has no separate controllers; ask for endpoint type 1 (brokers)",
            )))
            .with_endpoint_type(request.endpoint_type);
        return req.encode(&body);
    }
    let brokers = broker
        .membership()
        .members()
        .into_iter()
        .map(|m| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(m.node_id))
                .with_host(StrBytes::from_string(m.kafka.0))
                .with_port(i32::from(m.kafka.1))
                .with_rack(m.zone.map(StrBytes::from_string))
        })
        .collect();
    let body = DescribeClusterResponse::default()
        .with_endpoint_type(1)
        .with_cluster_id(StrBytes::from_static_str("strata"))
        .with_controller_id(BrokerId(controller(broker)))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(i32::MIN);
    req.encode(&body)
}
