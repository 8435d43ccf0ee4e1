//! Integration tests: the app on a random port with a fresh database per test, run on SQLite
//! and (when `HOOKDOCK_TEST_DATABASE_URL` is set) on PostgreSQL.

mod api;
mod auth;
mod automations;
mod backfill;
mod cli;
mod commands;
mod crash;
mod github;
mod helpers;
mod hooks;
mod ingest;
mod llm;
mod metrics;
mod queue;
mod records;
mod source;
