//! The admin endpoint: HTTP/JSON API v1 on a root-only unix socket in PID 1 ([`server`]),
//! its pure routing and rate limiting ([`api`]), the small HTTP layer ([`http`]) and the
//! CLI's client ([`client`]).

pub mod api;
pub mod client;
pub mod http;
pub mod server;
