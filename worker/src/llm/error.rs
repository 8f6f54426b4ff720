//! How an LLM call fails, and what each failure means: whether retrying may help, and
//! whether it is the tenant's own (its key, its model, its quota) or the provider's.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("LLM provider unreachable: {0}")]
    Unreachable(String),
    #[error("LLM call timed out after {0:?}")]
    Timeout(Duration),
    #[error("LLM provider answered {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("LLM answer could not be read: {0}")]
    Malformed(String),
    /// The response body was larger than `llm.max_response_bytes`: the provider's
    /// failure (the answer's own length is bounded by the tenant's output limit).
    #[error("LLM answer over {0} bytes")]
    TooLarge(usize),
    /// The provider's circuit breaker is open after repeated failures.
    #[error("LLM provider {0} is failing; its circuit breaker is open")]
    CircuitOpen(String),
    /// The tenant's own calls to this model kept failing (its key, its model name, its
    /// quota): its breaker is open; other tenants are not affected.
    #[error(
        "the tenant's calls to model {model} keep failing ({last}); its circuit breaker is open"
    )]
    TenantCircuitOpen {
        model: String,
        last: String,
        /// Whether the failure that opened it may heal by itself (a quota).
        transient: bool,
        /// Whether it was the tenant's key that was refused.
        key_refused: bool,
    },
}

impl LlmError {
    /// Whether the same call may succeed later (overload, outage, timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Timeout(_) | Self::CircuitOpen(_) | Self::TooLarge(_) => {
                true
            }
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Malformed(_) => false,
            Self::TenantCircuitOpen { transient, .. } => *transient,
        }
    }

    /// Whether the failure is the tenant's own rather than the provider's: a refused key
    /// (401/403), an unknown model (404), billing or quota (402, or a 429 that names
    /// its quota), a request the provider will never take (400, 413, 422). Such
    /// failures count against the tenant's breaker for the model, never the provider's.
    pub fn is_tenants_own(&self) -> bool {
        match self {
            Self::Status { status, body, .. } => match status {
                400 | 401 | 402 | 403 | 404 | 413 | 422 => true,
                429 => {
                    let body = body.to_ascii_lowercase();
                    body.contains("quota") || body.contains("billing")
                }
                _ => false,
            },
            Self::TenantCircuitOpen { .. } => true,
            _ => false,
        }
    }

    /// Whether the provider refused the key (401, 403), wants paying (402) or says the
    /// key's quota is spent (a 429 naming quota or billing).
    pub fn is_key_refused(&self) -> bool {
        match self {
            Self::Status { status, body, .. } => match status {
                401..=403 => true,
                429 => {
                    let body = body.to_ascii_lowercase();
                    body.contains("quota") || body.contains("billing")
                }
                _ => false,
            },
            Self::TenantCircuitOpen { key_refused, .. } => *key_refused,
            _ => false,
        }
    }

    /// The error as it may be logged, recorded or told: a refused key's answer is left
    /// out (providers quote the key they refused, if partly masked).
    pub fn described(&self) -> String {
        match self {
            Self::Status { status, .. } if self.is_key_refused() => {
                format!("LLM provider answered {status}: the key was refused or its quota is spent")
            }
            _ => self.to_string(),
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { .. } => "status",
            Self::Malformed(_) => "malformed",
            Self::TooLarge(_) => "too_large",
            Self::CircuitOpen(_) => "circuit_open",
            Self::TenantCircuitOpen { .. } => "tenant_circuit_open",
        }
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
