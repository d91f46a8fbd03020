//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{ConnError, Req, errors};
use crate::broker::{Broker, BrokerError, ConfigEntry};

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn source(entry: &ConfigEntry) -> i8 {
    if entry.is_set {
        SOURCE_DYNAMIC_TOPIC
    } else {
        SOURCE_DEFAULT
    }
}

/// Checks one CreateTopics entry and turns it into arguments for the core.
fn topic_args(
    broker: &Broker,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<(i32, BTreeMap<String, String>), BrokerError> {
    let partitions = match t.num_partitions {
        -1 => broker.config().default_partitions,
        n => n,
    };
    // Durability comes from the object store, so any replication factor is met; only
    // nonsense values are refused.
    if t.replication_factor == 0 || t.replication_factor < -1 {
        return Err(BrokerError::InvalidReplicationFactor(format!(
            "replication factor must be -1 or positive, not {}",
            t.replication_factor
        )));
    }
    if !t.assignments.is_empty() {
        return Err(BrokerError::InvalidPartitions(
            "Strata places partitions itself; replica assignments are refused".into(),
        ));
    }
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        let Some(value) = &c.value else {
            return Err(BrokerError::InvalidConfig(format!(
                "config {} has a null value",
                c.name.as_str()
            )));
        };
        configs.insert(c.name.to_string(), value.to_string());
    }
    Ok((partitions, configs))
}

/// Creates topics, each on its own: one bad entry does not stop the others.
pub async fn create_topics(
    broker: &Broker,
    req: Req,
    request: CreateTopicsRequest,
) -> Result<Bytes, ConnError> {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in &request.topics {
        let name = t.name.as_str();
        let created = match topic_args(broker, t) {
            Ok((partitions, configs)) => {
                broker
                    .create_topic(name, partitions, &configs, request.validate_only)
                    .await
            }
            Err(e) => Err(e),
        };
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        results.push(match created {
            Ok(topic) => {
                let configs = crate::broker::topics::describe(
                    &topic.meta.configs,
                    &broker.config().topic_defaults,
                )
                .iter()
                .map(|e| {
                    CreatableTopicConfigs::default()
                        .with_name(text(e.name.clone()))
                        .with_value(Some(text(e.value.clone())))
                        .with_config_source(source(e))
                })
                .collect();
                result
                    .with_topic_id(topic.meta.id.0)
                    .with_error_message(None)
                    .with_num_partitions(topic.meta.partitions)
                    .with_replication_factor(t.replication_factor.max(1))
                    .with_configs(Some(configs))
            }
            Err(e) => {
                tracing::info!(peer = %req.peer, topic = name, error = %e, "topic not created");
                result
                    .with_error_code(errors::code(&e))
                    .with_error_message(Some(text(e.to_string())))
            }
        });
    }
    req.encode(&CreateTopicsResponse::default().with_topics(results))
}

/// Deletes topics by name (v1–5) or by name or id (v6).
pub async fn delete_topics(
    broker: &Broker,
    req: Req,
    request: DeleteTopicsRequest,
) -> Result<Bytes, ConnError> {
    let mut names: Vec<(Option<TopicName>, uuid::Uuid)> = request
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    names.extend(request.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let mut results = Vec::with_capacity(names.len());
    for (name, id) in names {
        let topic = match (&name, id.is_nil()) {
            (Some(n), _) => broker.topic(n.as_str(), false).await,
            (None, false) => broker
                .topics()
                .into_iter()
                .find(|t| t.meta.id.0 == id)
                .ok_or_else(|| BrokerError::UnknownTopic(id.to_string())),
            (None, true) => Err(BrokerError::UnknownTopic(String::new())),
        };
        let outcome = match topic {
            Ok(t) => broker.delete_topic(&t.meta.name).await.map(|()| t),
            Err(e) => Err(e),
        };
        let result = DeletableTopicResult::default().with_name(name.clone());
        results.push(match outcome {
            Ok(t) => result
                .with_name(Some(TopicName(text(t.meta.name.clone()))))
                .with_topic_id(t.meta.id.0),
            Err(e) => result
                .with_topic_id(id)
                .with_error_code(if !id.is_nil() && name.is_none() {
                    ResponseError::UnknownTopicId.code()
                } else {
                    errors::code(&e)
                })
                .with_error_message(Some(text(e.to_string()))),
        });
    }
    req.encode(&DeleteTopicsResponse::default().with_responses(results))
}

/// Grows topics to new partition counts.
pub async fn create_partitions(
    broker: &Broker,
    req: Req,
    request: CreatePartitionsRequest,
) -> Result<Bytes, ConnError> {
    let mut results = Vec::with_capacity(request.topics.len());
    for t in request.topics {
        let outcome = if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            Err(BrokerError::InvalidPartitions(
                "Strata places partitions itself; replica assignments are refused".into(),
            ))
        } else {
            broker
                .create_partitions(t.name.as_str(), t.count, request.validate_only)
                .await
        };
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        results.push(match outcome {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(errors::code(&e))
                .with_error_message(Some(text(e.to_string()))),
        });
    }
    req.encode(&CreatePartitionsResponse::default().with_results(results))
}

fn broker_configs(broker: &Broker) -> Vec<(String, String)> {
    let c = broker.config();
    vec![
        (
            "auto.create.topics.enable".into(),
            c.auto_create_topics.to_string(),
        ),
        (
            "message.max.bytes".into(),
            c.topic_defaults.max_message_bytes.to_string(),
        ),
        ("num.partitions".into(), c.default_partitions.to_string()),
    ]
}

/// Describes topic configs (every known config with its source) and broker configs.
pub async fn describe_configs(
    broker: &Broker,
    req: Req,
    request: DescribeConfigsRequest,
) -> Result<Bytes, ConnError> {
    let mut results = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let wanted = |name: &str| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
        };
        let result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let entries: Result<Vec<(String, String, i8)>, BrokerError> = match r.resource_type {
            RESOURCE_TOPIC => {
                broker
                    .describe_configs(r.resource_name.as_str())
                    .await
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|e| (e.name.clone(), e.value.clone(), source(e)))
                            .collect()
                    })
            }
            RESOURCE_BROKER => Ok(broker_configs(broker)
                .into_iter()
                .map(|(n, v)| (n, v, SOURCE_STATIC_BROKER))
                .collect()),
            other => Err(BrokerError::InvalidConfig(format!(
                "resource type {other} has no configs here; use 2 (topic) or 4 (broker)"
            ))),
        };
        results.push(match entries {
            Ok(entries) => result.with_error_message(None).with_configs(
                entries
                    .into_iter()
                    .filter(|(n, _, _)| wanted(n))
                    .map(|(n, v, s)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(text(n))
                            .with_value(Some(text(v)))
                            .with_read_only(s == SOURCE_STATIC_BROKER)
                            .with_config_source(s)
                    })
                    .collect(),
            ),
            Err(e) => {
                let code = match (&e, r.resource_type) {
                    (BrokerError::InvalidConfig(_), _) => ResponseError::InvalidRequest.code(),
                    _ => errors::code(&e),
                };
                result
                    .with_error_code(code)
                    .with_error_message(Some(text(e.to_string())))
            }
        });
    }
    req.encode(&DescribeConfigsResponse::default().with_results(results))
}
