//! What a tenant is to the platform, apart from its rows: the plan it pays for (which
//! sets its limits, `plans.<plan>` in the settings), its status (only an active
//! tenant's bot speaks) and the tone its persona takes. Both are closed sets, stored as words (`as_str` and `FromStr`
//! come with their database mapping, in `db/clients.rs`). Depends on no other module.

use serde::{Deserialize, Serialize};

/// The plan a tenant pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Starter,
    Growth,
    Enterprise,
}

/// Whether a tenant's bot speaks: suspended and cancelled tenants get no LLM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientStatus {
    Active,
    Suspended,
    Cancelled,
}

/// The tone a tenant's persona takes (the prompt's `Tone:` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersonaTone {
    Friendly,
    Professional,
    Formal,
    Casual,
    Empathetic,
    Playful,
    Concise,
}

impl PersonaTone {
    /// Every tone, in the order the API documents them.
    pub const ALL: [Self; 7] = [
        Self::Friendly,
        Self::Professional,
        Self::Formal,
        Self::Casual,
        Self::Empathetic,
        Self::Playful,
        Self::Concise,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_statuses_parse_from_their_words_only() {
        for plan in [Plan::Starter, Plan::Growth, Plan::Enterprise] {
            assert_eq!(plan.as_str().parse::<Plan>(), Ok(plan));
        }
        for status in [
            ClientStatus::Active,
            ClientStatus::Suspended,
            ClientStatus::Cancelled,
        ] {
            assert_eq!(status.as_str().parse::<ClientStatus>(), Ok(status));
        }
        for tone in PersonaTone::ALL {
            assert_eq!(tone.as_str().parse::<PersonaTone>(), Ok(tone));
        }
        let refused = "gold".parse::<Plan>().expect_err("not a plan");
        assert_eq!(
            refused.to_string(),
            "unknown plan (expected starter, growth or enterprise) \"gold\""
        );
    }
}
