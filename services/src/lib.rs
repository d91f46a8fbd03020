//! The Strata broker: one core, with thin front ends over it.
//!
//! - [`broker`]: the core — topics, produce, fetch, offsets — over the storage engine;
//! - [`cluster`]: membership, leases and partition ownership among brokers on one catalog;
//! - [`kafka`]: the Kafka wire protocol front end;
//! - [`quic`]: the native protocol front end over QUIC, with [`tls`] for its certificates;
//! - [`consumer_protocol`]: Kafka's consumer-group encodings, shared by both front ends and
//!   the client;
//! - [`http`]: the REST front end (Confluent REST Proxy v2 and v3), health, readiness, the
//!   status page and Prometheus metrics;
//! - [`cli`]: the `strata` command line over the client;
//! - [`client`]: the Rust client library of the native protocol;
//! - [`serve`]: process wiring for `strata serve`, configured by [`config`];
//! - [`telemetry`]: logs, and OpenTelemetry traces and metrics over OTLP when asked for.

pub mod broker;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod consumer_protocol;
pub mod front_metrics;
pub mod http;
pub mod kafka;
pub mod quic;
pub mod serve;
pub mod telemetry;
pub mod tls;
