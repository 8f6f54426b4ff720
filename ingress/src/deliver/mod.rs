//! Outbound deliverers: one consumer per channel's `<prefix>.outbound.<channel>` queue.

pub(crate) mod mailbox;
mod push;
pub(crate) mod whatsapp;
