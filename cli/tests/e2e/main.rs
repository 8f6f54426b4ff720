//! End-to-end tests: ingress and worker run in-process against the real MariaDB,
//! RabbitMQ and Redis, each test on its own database, queue prefix and key prefix, with
//! the LLM simulator standing in for the model.

mod admin;
mod affinity;
mod api;
mod browser;
mod chromium;
mod cluster;
mod config_changes;
mod console;
mod console_routes;
mod delivery;
mod failures;
mod fuzz;
mod handoff;
mod isolation;
mod knowledge;
mod mobile;
mod operations;
mod privacy;
mod replay;
mod security;
mod shards;
mod spending;
mod streaming;
mod support;
mod tls;
mod tools;
mod traces;
mod webhooks;
mod whatsapp;
mod widget;
