//! hookdock: a self-hosted GitHub webhook hub.
//!
//! Deliveries are verified (HMAC-SHA256 over the raw body), deduplicated by delivery id and
//! committed to the database before GitHub is answered; the database is also the work queue
//! whose jobs run the handlers with leases, retries and a dead-letter state.
//!
//! Modules: [`config`] (settings), [`http`] (routes and error mapping), [`ingest`] (verify,
//! parse, persist), [`store`] (all SQL), [`queue`] (workers), [`handlers`] (what runs per event),
//! [`events`] (operator actions), [`send`] (the signing client), [`github`] (the REST client),
//! [`hooks`] (hookdock's webhooks on GitHub), [`auth`] (sign-in with GitHub), [`crypto`]
//! (secrets at rest), [`metrics`] (pull request flow metrics), [`app`] (start-up and
//! shutdown), [`telemetry`].

pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod events;
pub mod github;
pub mod handlers;
pub mod hooks;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod queue;
pub mod send;
pub mod store;
pub mod telemetry;

pub use app::{App, AppError};
pub use config::{Settings, Sources};
