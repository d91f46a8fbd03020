//! Changing configs: AlterConfigs (the whole set of a topic's configs replaced) and
//! IncrementalAlterConfigs (KIP-339: set, delete, append to or subtract from single configs).
//!
//! Every change of one resource is checked before any is stored, so a request with one bad
//! value changes nothing for that resource, as in Kafka. Broker configs are the `strata serve`
//! flags and cannot be changed at run time: such requests get INVALID_REQUEST with a message
//! saying so.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, alter_configs_response, incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;

use super::{ConnError, Req, errors};
use crate::broker::{Broker, BrokerError};

/// Resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// A refusal with its Kafka code.
struct Refusal(i16, String);

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Self {
        let code = match e {
            BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
            ref e => errors::code(e),
        };
        Refusal(code, e.to_string())
    }
}

fn invalid_request(message: String) -> Refusal {
    Refusal(ResponseError::InvalidRequest.code(), message)
}

fn check_resource(resource_type: i8) -> Result<(), Refusal> {
    match resource_type {
        RESOURCE_TOPIC => Ok(()),
        RESOURCE_BROKER => Err(invalid_request(
            "broker configs are the flags of `strata serve` and cannot be changed at run time"
                .into(),
        )),
        other => Err(invalid_request(format!(
            "resource type {other} has no configs here; use 2 (topic)"
        ))),
    }
}

/// A resource's error code and message for the answer, with a log line for a refusal.
fn outcome(
    req: &Req,
    api: &str,
    name: &str,
    result: Result<(), Refusal>,
) -> (i16, Option<StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err(Refusal(code, message)) => {
            tracing::warn!(peer = %req.peer, api, resource = name, error = message, "config change refused");
            (code, Some(StrBytes::from_string(message)))
        }
    }
}

/// Applies `changes` to topic `name` (or only checks them).
async fn apply(
    broker: &Broker,
    name: &str,
    changes: BTreeMap<String, Option<String>>,
    validate_only: bool,
) -> Result<(), Refusal> {
    let set: BTreeMap<String, String> = changes
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    crate::broker::topics::validate_configs(&set)?;
    if validate_only {
        broker.topic(name, false).await?;
        for k in changes.keys() {
            crate::broker::topics::validate_name_of_config(k)?;
        }
        return Ok(());
    }
    broker.alter_configs(name, &changes).await?;
    Ok(())
}

/// AlterConfigs: the topic's configs become exactly the ones given (others return to their
/// defaults).
pub async fn alter_configs(
    broker: &Broker,
    req: Req,
    request: AlterConfigsRequest,
) -> Result<Bytes, ConnError> {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let name = r.resource_name.to_string();
        let result = async {
            check_resource(r.resource_type)?;
            let current = broker.topic(&name, false).await?.meta.configs.clone();
            let mut changes: BTreeMap<String, Option<String>> =
                current.keys().map(|k| (k.clone(), None)).collect();
            for c in &r.configs {
                changes.insert(c.name.to_string(), c.value.as_ref().map(|v| v.to_string()));
            }
            apply(broker, &name, changes, request.validate_only).await
        }
        .await;
        let (code, message) = outcome(&req, "AlterConfigs", &name, result);
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    req.encode(&AlterConfigsResponse::default().with_responses(responses))
}

/// The new value of a list config (`cleanup.policy`) after APPEND or SUBTRACT.
fn edit_list(current: Option<&str>, value: &str, append: bool) -> String {
    let mut items: Vec<String> = current
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for v in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if append {
            if !items.iter().any(|i| i == v) {
                items.push(v.to_string());
            }
        } else {
            items.retain(|i| i != v);
        }
    }
    items.join(",")
}

/// IncrementalAlterConfigs: each config set, deleted (back to its default), or a list config
/// appended to or subtracted from.
pub async fn incremental_alter_configs(
    broker: &Broker,
    req: Req,
    request: IncrementalAlterConfigsRequest,
) -> Result<Bytes, ConnError> {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let name = r.resource_name.to_string();
        let result = async {
            check_resource(r.resource_type)?;
            let topic = broker.topic(&name, false).await?;
            let effective: BTreeMap<String, String> = broker
                .describe_configs(&name)
                .await?
                .into_iter()
                .map(|e| (e.name, e.value))
                .collect();
            let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
            for c in &r.configs {
                let key = c.name.to_string();
                if changes.contains_key(&key) {
                    return Err(invalid_request(format!("config '{key}' appears twice")));
                }
                let value = c.value.as_ref().map(|v| v.to_string());
                let new = match (c.config_operation, value) {
                    (OP_SET, Some(v)) => Some(v),
                    (OP_DELETE, _) => None,
                    (op @ (OP_APPEND | OP_SUBTRACT), Some(v)) => {
                        if key != "cleanup.policy" {
                            return Err(invalid_request(format!(
                                "'{key}' is not a list config; APPEND and SUBTRACT apply to cleanup.policy"
                            )));
                        }
                        let current = topic
                            .meta
                            .configs
                            .get(&key)
                            .or_else(|| effective.get(&key))
                            .map(String::as_str);
                        Some(edit_list(current, &v, op == OP_APPEND))
                    }
                    (OP_SET | OP_APPEND | OP_SUBTRACT, None) => {
                        return Err(invalid_request(format!("config '{key}' needs a value")));
                    }
                    (op, _) => {
                        return Err(invalid_request(format!(
                            "unknown config operation {op} for '{key}'"
                        )));
                    }
                };
                changes.insert(key, new);
            }
            apply(broker, &name, changes, request.validate_only).await
        }
        .await;
        let (code, message) = outcome(&req, "IncrementalAlterConfigs", &name, result);
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    req.encode(&IncrementalAlterConfigsResponse::default().with_responses(responses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_configs_append_and_subtract() {
        assert_eq!(edit_list(Some("delete"), "compact", true), "delete,compact");
        assert_eq!(
            edit_list(Some("delete,compact"), "compact", true),
            "delete,compact"
        );
        assert_eq!(
            edit_list(Some("delete,compact"), "delete", false),
            "compact"
        );
        assert_eq!(edit_list(None, "compact", true), "compact");
    }
}
