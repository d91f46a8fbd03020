//! The Strata broker: one core, with thin front ends over it.
//!
//! - [`broker`]: the core — topics, produce, fetch, offsets — over the storage engine;
//! - [`kafka`]: the Kafka wire protocol front end;
//! - [`http`]: health and Prometheus metrics;
//! - [`serve`]: process wiring for `strata serve`, configured by [`config`].

pub mod broker;
pub mod config;
pub mod http;
pub mod kafka;
pub mod serve;
