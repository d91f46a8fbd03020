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

fn topic_entry(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let node = BrokerId(broker.config().node_id);
    let partitions = (0..topic.meta.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(node)
                .with_leader_epoch(super::log::LEADER_EPOCH)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
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
    let config = broker.config();
    let (host, port) = &config.advertised_kafka;
    let me = MetadataResponseBroker::default()
        .with_node_id(BrokerId(config.node_id))
        .with_host(StrBytes::from_string(host.clone()))
        .with_port(i32::from(*port))
        .with_rack(config.zone.clone().map(StrBytes::from_string));
    let body = MetadataResponse::default()
        .with_brokers(vec![me])
        .with_cluster_id(Some(StrBytes::from_static_str("strata")))
        .with_controller_id(BrokerId(config.node_id))
        .with_topics(topics);
    req.encode(&body)
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
    let config = broker.config();
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
    let (host, port) = &config.advertised_kafka;
    let me = DescribeClusterBroker::default()
        .with_broker_id(BrokerId(config.node_id))
        .with_host(StrBytes::from_string(host.clone()))
        .with_port(i32::from(*port))
        .with_rack(config.zone.clone().map(StrBytes::from_string));
    let body = DescribeClusterResponse::default()
        .with_endpoint_type(1)
        .with_cluster_id(StrBytes::from_static_str("strata"))
        .with_controller_id(BrokerId(config.node_id))
        .with_brokers(vec![me])
        .with_cluster_authorized_operations(i32::MIN);
    req.encode(&body)
}
