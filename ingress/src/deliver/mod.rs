//! Outbound deliverers: one consumer per channel's `<prefix>.outbound.<channel>` queue,
//! and the webhook deliverer on `<prefix>.webhooks`.

pub(crate) mod mailbox;
mod push;
pub(crate) mod webhooks;
pub(crate) mod whatsapp;
