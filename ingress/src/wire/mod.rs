//! The HTTP surface's own types: what requests carry in and responses carry out, with
//! their OpenAPI schemas. Built from and into the data layer's types by `From`; rows are
//! never serialised, so a column can change without changing the API by accident, and
//! the API can change without touching the data layer. Field names are the data model's
//! column names (DESIGN.md §12). Types used by one endpoint only live beside it.

mod config;
mod messages;
mod modes;
mod records;
mod tenants;
mod tools;
mod webhooks;

pub(crate) use config::{
    BudgetAction, BuiltinTool, ConfigIn, ConfigOut, ConfigPatch, PersonaTone, TemplateRef,
};
pub(crate) use messages::{MessageOut, MessageRole, PolledMessage, PolledMessages};
pub(crate) use modes::{AgentModeIn, AgentModeOut, ModePatchIn};
pub(crate) use records::{
    ApiKeyOut, ChannelAccountOut, ConversationOut, KnowledgeDocumentOut, UsageDayOut,
    UsageMonthOut, UsageOut, UsageTotalOut,
};
pub(crate) use tenants::{ClientOut, ClientPatchIn, ClientStatus, Plan};
pub(crate) use tools::{ToolAuthIn, ToolCallOut, ToolIn, ToolMethod, ToolOut, ToolPatchIn};
pub(crate) use webhooks::{
    AttemptOut, AttemptPage, CreatedWebhook, RotatedSecret, WebhookIn, WebhookOut, WebhookPatchIn,
};
