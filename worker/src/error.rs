//! The worker's error type, and the one place that decides what happens to a delivery
//! that failed: [`TurnError::disposition`].

use std::time::Duration;

use shared::ids::ClientId;
use shared::mq::RetryRung;

use crate::llm::LlmError;

pub type Result<T, E = TurnError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The body is not an envelope this build can read.
    #[error("undecodable envelope: {0}")]
    Undecodable(String),
    /// The envelope names a tenant that does not exist (deleted, or forged).
    #[error("unknown tenant {0}")]
    UnknownTenant(ClientId),
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// Database, broker or Redis.
    #[error(transparent)]
    Infra(#[from] shared::Error),
    /// Another worker held the conversation for longer than `worker.lock_wait_s`.
    #[error("the conversation is busy on another worker")]
    ConversationBusy,
    /// The tenant is over its plan's message rate; try again after this long.
    #[error("tenant over its plan's message rate; next slot in {0:?}")]
    RateLimited(Duration),
}

/// What to do with a delivery whose turn failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Try again after the delay of this rung of the retry ladder (counts as an attempt).
    Retry(RetryRung),
    /// Wait on this rung without counting an attempt (rate limits: delayed, never dropped).
    Delay(RetryRung),
    /// Give up: dead-letter with this reason (and close the turn as failed).
    DeadLetter(String),
}

impl TurnError {
    /// Decides the fate of a delivery on its `attempt`-th try (1-based), given the retry
    /// ladder's delays. Transient failures climb the ladder (honouring a provider's
    /// `Retry-After`); permanent ones, and transient ones past the last rung, are
    /// dead-lettered with the reason.
    pub fn disposition(&self, attempt: u32, ladder: &[Duration]) -> Disposition {
        if let Self::ConversationBusy = self {
            return Disposition::Delay(RetryRung(0));
        }
        if let Self::RateLimited(wait) = self {
            let rung = ladder
                .iter()
                .position(|d| d >= wait)
                .unwrap_or(ladder.len().saturating_sub(1));
            return Disposition::Delay(RetryRung(rung));
        }
        let transient = match self {
            Self::Undecodable(_) | Self::UnknownTenant(_) => false,
            Self::Llm(e) => e.is_transient(),
            Self::Infra(e) => e.is_transient(),
            Self::RateLimited(_) | Self::ConversationBusy => true,
        };
        if !transient {
            return Disposition::DeadLetter(self.reason());
        }
        let mut rung = attempt.saturating_sub(1) as usize;
        if rung >= ladder.len() {
            return Disposition::DeadLetter(format!(
                "{} (gave up after {attempt} attempts)",
                self.reason()
            ));
        }
        if let Some(wait) = self.retry_after() {
            while rung + 1 < ladder.len() && ladder[rung] < wait {
                rung += 1;
            }
        }
        Disposition::Retry(RetryRung(rung))
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Llm(e) => e.retry_after(),
            _ => None,
        }
    }

    /// A short, stable reason for dead-letter headers and metrics.
    pub fn reason(&self) -> String {
        match self {
            Self::Undecodable(e) => format!("undecodable: {e}"),
            Self::UnknownTenant(id) => format!("unknown_tenant: {id}"),
            Self::Llm(e) => format!("llm: {e}"),
            Self::Infra(e) => format!("infrastructure: {e}"),
            Self::RateLimited(_) => "rate_limited".to_owned(),
            Self::ConversationBusy => "conversation_busy".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<Duration> {
        [1, 10, 60].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn transient_llm_errors_climb_the_ladder_then_dead_letter() {
        let e = TurnError::Llm(LlmError::Unreachable("refused".into()));
        assert_eq!(
            e.disposition(1, &ladder()),
            Disposition::Retry(RetryRung(0))
        );
        assert_eq!(
            e.disposition(3, &ladder()),
            Disposition::Retry(RetryRung(2))
        );
        assert!(
            matches!(e.disposition(4, &ladder()), Disposition::DeadLetter(r) if r.contains("after 4 attempts"))
        );
    }

    #[test]
    fn retry_after_picks_a_long_enough_rung() {
        let e = TurnError::Llm(LlmError::Status {
            status: 429,
            body: String::new(),
            retry_after: Some(Duration::from_secs(30)),
        });
        assert_eq!(
            e.disposition(1, &ladder()),
            Disposition::Retry(RetryRung(2))
        );
    }

    #[test]
    fn rate_limits_delay_without_spending_attempts() {
        let e = TurnError::RateLimited(Duration::from_secs(5));
        assert_eq!(
            e.disposition(1, &ladder()),
            Disposition::Delay(RetryRung(1))
        );
        // Even past the last rung a rate-limited message waits; it is never dead-lettered.
        assert_eq!(
            e.disposition(9, &ladder()),
            Disposition::Delay(RetryRung(1))
        );
        let e = TurnError::RateLimited(Duration::from_secs(3600));
        assert_eq!(
            e.disposition(1, &ladder()),
            Disposition::Delay(RetryRung(2))
        );
    }

    #[test]
    fn permanent_errors_are_dead_lettered_at_once() {
        let e = TurnError::Undecodable("eof".into());
        assert!(matches!(
            e.disposition(1, &ladder()),
            Disposition::DeadLetter(_)
        ));
        let e = TurnError::Llm(LlmError::Status {
            status: 404,
            body: "no such model".into(),
            retry_after: None,
        });
        assert!(matches!(
            e.disposition(1, &ladder()),
            Disposition::DeadLetter(_)
        ));
    }
}
