//! Strata's wire-level vocabulary, shared by the broker and its clients.
//!
//! For now this is [`frame`]: the length-prefixed framing that both the Kafka protocol and
//! Strata's native protocol use, with the length checked before anything is allocated. The
//! native protocol's messages, error codes and version negotiation will live here too, so a
//! client needs this crate and nothing of the broker's.

pub mod frame;
