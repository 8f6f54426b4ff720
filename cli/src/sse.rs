//! Reading server-sent events from a response body, for the bench's and the chaos run's
//! streaming clients: blocks separated by a blank line, `event:`, `id:` and `data:`
//! fields; comments (keep-alives) skipped.

/// One event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Takes every complete event out of `buffer` (what arrived so far), leaving a partial
/// one for the next chunk.
pub(crate) fn drain_events(buffer: &mut String) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut event = SseEvent::default();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event.event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("id:") {
                event.id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !event.event.is_empty() || !event.data.is_empty() {
            events.push(event);
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_events_are_taken_and_partial_ones_kept() {
        let mut buffer =
            ": keep-alive\n\nevent: message\nid: 7\ndata: {\"a\":1}\n\nevent: del".to_owned();
        let events = drain_events(&mut buffer);
        assert_eq!(
            events,
            [SseEvent {
                event: "message".into(),
                id: Some("7".into()),
                data: "{\"a\":1}".into(),
            }]
        );
        assert_eq!(buffer, "event: del");
        buffer.push_str("ta\ndata: {}\n\n");
        assert_eq!(drain_events(&mut buffer)[0].event, "delta");
    }
}
