//! A turn's tool calls: each call the model asks for is run (or, for a turn run again
//! after a crash, its recorded result reused) and recorded before the turn goes on; its
//! result goes back to the model within what is left of the prompt's token budget.
//!
//! A call is known by the turn (the envelope id of the turn's first message, the same
//! however often the turn runs) and its index in the turn. A recorded call of the same
//! index, tool and arguments is not made again; a side-effect call that was made but
//! never recorded is made again with the same `Idempotency-Key: <turn id>:<index>`, so
//! the endpoint can drop it. A dry-run replay records nothing and never makes a
//! side-effect call: it gives the model the original turn's recorded result, or tells it
//! the call was not made.

use std::time::Instant;

use shared::db::{BuiltinTool, TenantConfig, ToolCallRecord, ToolCallStatus};
use shared::ids::{ConversationId, EnvelopeId};
use shared::metric;

use crate::Ctx;
use crate::error::Result;
use crate::llm::{ToolCall, ToolSpec};
use crate::tools::{self, Outcome};

/// Whose tool calls these are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallsOf {
    /// A turn of a conversation: calls are recorded.
    Turn {
        turn_id: EnvelopeId,
        conversation_id: ConversationId,
    },
    /// A dry-run replay of the turn `turn_id` started: nothing is recorded.
    DryRun { turn_id: EnvelopeId },
}

impl CallsOf {
    fn turn_id(self) -> EnvelopeId {
        match self {
            Self::Turn { turn_id, .. } | Self::DryRun { turn_id } => turn_id,
        }
    }
}

/// What a round of calls ended in.
pub(crate) enum Round {
    /// Results to give the model, one per call, in order.
    Results(Vec<String>),
    /// `offer_choices`: the answer is this text with these choices.
    Choices { text: String, choices: Vec<String> },
    /// `handoff_to_human`: the conversation goes to a person.
    HandOff,
}

/// The tools offered to the model: the tenant's active tools, then its built-ins.
pub(crate) fn offered(tenant: &TenantConfig) -> Vec<ToolSpec> {
    tenant
        .tools
        .iter()
        .filter(|t| t.is_active)
        .map(tools::spec)
        .chain(
            tenant
                .config
                .builtin_tools
                .iter()
                .map(|b| tools::builtin_spec(*b)),
        )
        .collect()
}

/// The tool calls of one turn.
pub(crate) struct ToolLoop<'a> {
    ctx: &'a Ctx,
    tenant: &'a TenantConfig,
    of: CallsOf,
    /// What an earlier run of the turn recorded (a dry run: the original turn).
    recorded: Vec<ToolCallRecord>,
    next_index: u32,
}

impl<'a> ToolLoop<'a> {
    pub(crate) async fn start(
        ctx: &'a Ctx,
        tenant: &'a TenantConfig,
        of: CallsOf,
    ) -> Result<ToolLoop<'a>> {
        let recorded = ctx
            .db
            .tenant(tenant.client.id)
            .tool_calls()
            .for_turn(of.turn_id())
            .await?;
        Ok(Self {
            ctx,
            tenant,
            of,
            recorded,
            next_index: 0,
        })
    }

    /// Runs a round of calls. A built-in that ends the turn (`offer_choices` with good
    /// arguments, `handoff_to_human`) wins over the other calls of its round, which are
    /// not made.
    pub(crate) async fn round(&mut self, calls: &[ToolCall]) -> Result<Round> {
        let enabled = |b: BuiltinTool| self.tenant.config.builtin_tools.contains(&b);
        for call in calls {
            let builtin = call
                .name
                .parse::<BuiltinTool>()
                .ok()
                .filter(|b| enabled(*b));
            match builtin {
                Some(BuiltinTool::HandoffToHuman) => {
                    self.settle(call, || async { ok("handed to a person") })
                        .await?;
                    return Ok(Round::HandOff);
                }
                Some(BuiltinTool::OfferChoices) => {
                    if let Ok((text, choices)) = tools::offered_choices(&call.arguments) {
                        self.settle(call, || async { ok("choices offered") })
                            .await?;
                        return Ok(Round::Choices { text, choices });
                    }
                }
                None => {}
            }
        }
        let mut results = Vec::with_capacity(calls.len());
        for call in calls {
            results.push(self.one(call).await?);
        }
        Ok(Round::Results(results))
    }

    /// Runs (or reuses) one call of a tenant's tool; its result for the model.
    async fn one(&mut self, call: &ToolCall) -> Result<String> {
        let (ctx, tenant, of) = (self.ctx, self.tenant, self.of);
        let index = self.next_index;
        let original = self.recorded_as(index, call).map(|r| r.result.clone());
        let tool = tenant.tools.iter().find(|t| t.name == call.name);
        self.settle(call, || async move {
            let Some(tool) = tool else {
                let outcome = Outcome {
                    status: ToolCallStatus::Invalid,
                    result: format!("error: there is no tool named {:?}", call.name),
                };
                tools::count(outcome.status);
                return outcome;
            };
            if matches!(of, CallsOf::DryRun { .. }) && tool.side_effects {
                let outcome = match original {
                    Some(result) => Outcome {
                        status: ToolCallStatus::Ok,
                        result,
                    },
                    None => Outcome {
                        status: ToolCallStatus::NotCalled,
                        result: "error: the call was not made (a dry-run replay does not \
                                 repeat calls that change things)"
                            .to_owned(),
                    },
                };
                tools::count(ToolCallStatus::NotCalled);
                return outcome;
            }
            let key = format!("{}:{index}", of.turn_id());
            ctx.tools
                .call(tenant.client.id, tool, &call.arguments, &key)
                .await
        })
        .await
    }

    /// The earlier run's record of call `index`, if it was this call.
    fn recorded_as(&self, index: u32, call: &ToolCall) -> Option<&ToolCallRecord> {
        self.recorded
            .iter()
            .find(|r| r.call_index == index && r.tool == call.name && r.arguments == call.arguments)
    }

    /// Takes the next index for `call`: an earlier run's result when it recorded this
    /// call (not made again), else `run`'s, recorded before the turn goes on.
    async fn settle<F, Fut>(&mut self, call: &ToolCall, run: F) -> Result<String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let index = self.next_index;
        self.next_index += 1;
        if matches!(self.of, CallsOf::Turn { .. })
            && let Some(recorded) = self.recorded_as(index, call)
        {
            metrics::counter!(metric::TOOL_CALLS, "outcome" => "reused").increment(1);
            return Ok(recorded.result.clone());
        }
        let started = Instant::now();
        let outcome = run().await;
        if let CallsOf::Turn {
            turn_id,
            conversation_id,
        } = self.of
        {
            let record = ToolCallRecord {
                turn_id,
                call_index: index,
                tool: call.name.clone(),
                arguments: call.arguments.clone(),
                status: outcome.status,
                result: outcome.result.clone(),
                duration_ms: tools::elapsed_ms(started),
            };
            self.ctx
                .db
                .tenant(self.tenant.client.id)
                .tool_calls()
                .record(conversation_id, &record)
                .await?;
        }
        tracing::debug!(tool = %call.name, index, status = %outcome.status, "tool called");
        Ok(outcome.result)
    }
}

fn ok(result: &str) -> Outcome {
    tools::count(ToolCallStatus::Ok);
    Outcome {
        status: ToolCallStatus::Ok,
        result: result.to_owned(),
    }
}
