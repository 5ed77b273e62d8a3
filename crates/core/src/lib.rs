//! Shared platform of misim: the simulated clock, crypto (RSA keys, X.509, JWS), the CA and TLS
//! set-up, HTTP serving with graceful shutdown, SQLite pools, and the wire types of the internal
//! edges between services. No service logic lives here.

pub mod cache;
pub mod clock;
pub mod crypto;
pub mod db;
pub mod events;
pub mod faults;
pub mod federation;
pub mod internal;
pub mod jose;
pub mod serve;
pub mod tls;

pub use clock::Clock;
pub mod urls;
