//! Strata's wire-level vocabulary, shared by the broker and its clients.
//!
//! - [`frame`]: the length-prefixed framing both the Kafka protocol and the native protocol use,
//!   with the length checked before anything is allocated.
//! - [`native`]: the native QUIC protocol's frames, messages, error codes and versions, so a
//!   client needs this crate and nothing of the broker's. `proto/README.md` specifies it for
//!   clients in other languages.

pub mod frame;
pub mod native;
