//! Supervision of opencode: the pure state machine ([`state`]), spawning it as the service
//! user ([`spawn`]) and probing its health endpoint ([`probe`]).

pub mod probe;
pub mod spawn;
pub mod state;
