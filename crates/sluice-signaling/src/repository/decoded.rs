//! Flows this process stored or read recently, each with the exact bytes it is stored as: a read
//! that finds the same bytes in the store takes the flow from here instead of parsing its JSON
//! again (a tenth of a start+terminate pair's instructions went to that parse).
//!
//! The bytes are the check, not a version or an ETag: whoever wrote the flow (this replica or
//! another), equal bytes decode to the flow kept with them, so a stale entry is never served —
//! it is only a miss. (One nuance: a float in a flow's claims or metadata that serde_json's fast
//! float parser would read back one unit in the last place off comes from here as written.)
//! Flows in a final state are not kept (they are rarely read again), and the
//! number of flows kept is bounded.

use std::sync::Mutex;

use bytes::Bytes;

use super::FastMap;
use crate::flow::DataFlow;

/// How many flows are kept at most.
const CAPACITY: usize = 4096;

/// Decoded flows by id.
#[derive(Default)]
pub(super) struct Decoded {
    flows: Mutex<FastMap<String, Kept>>,
}

struct Kept {
    bytes: Bytes,
    flow: DataFlow,
}

impl Decoded {
    /// The flow `id` if `stored` are the bytes it was kept with.
    pub(super) fn get(&self, id: &str, stored: &[u8]) -> Option<DataFlow> {
        let flows = self.flows.lock().ok()?;
        matching(&flows, id, stored).map(|kept| kept.flow.clone())
    }

    /// Like [`Decoded::get`], but the flow is handed over rather than copied (for a caller
    /// about to change and store it, which keeps the result again).
    pub(super) fn take(&self, id: &str, stored: &[u8]) -> Option<DataFlow> {
        let mut flows = self.flows.lock().ok()?;
        matching(&flows, id, stored)?;
        flows.remove(id).map(|kept| kept.flow)
    }

    /// Keeps `flow`, stored as `bytes` (which decode to it); a flow in a final state is
    /// forgotten instead.
    pub(super) fn put(&self, flow: &DataFlow, bytes: Bytes) {
        let Ok(mut flows) = self.flows.lock() else {
            return;
        };
        if flow.state.is_final() {
            flows.remove(&flow.id);
            return;
        }
        if flows.len() >= CAPACITY && !flows.contains_key(&flow.id) {
            // Any one: the map's order is as good as random.
            if let Some(evicted) = flows.keys().next().cloned() {
                flows.remove(&evicted);
            }
        }
        flows.insert(
            flow.id.clone(),
            Kept {
                bytes,
                flow: flow.clone(),
            },
        );
    }

    /// How many flows are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.flows.lock().map(|f| f.len()).unwrap_or(0)
    }
}

/// The flow kept for `id`, if it was kept with exactly the `stored` bytes.
fn matching<'a>(flows: &'a FastMap<String, Kept>, id: &str, stored: &[u8]) -> Option<&'a Kept> {
    flows.get(id).filter(|kept| kept.bytes.as_ref() == stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Side;
    use crate::messages::{FlowMessage, TransferMode};
    use crate::state::FlowState;

    fn flow(id: &str, state: FlowState) -> DataFlow {
        let msg = FlowMessage {
            message_id: format!("m-{id}"),
            process_id: format!("p-{id}"),
            profile: "x-pull".into(),
            ..FlowMessage::default()
        };
        DataFlow::new(
            id.into(),
            Side::Provider,
            TransferMode::Pull,
            &msg,
            state,
            10,
        )
    }

    fn bytes(f: &DataFlow) -> Bytes {
        Bytes::from(serde_json::to_vec(f).unwrap())
    }

    #[test]
    fn a_flow_is_served_only_for_the_bytes_it_was_kept_with() {
        let d = Decoded::default();
        let f = flow("f1", FlowState::Started);
        d.put(&f, bytes(&f));
        assert_eq!(d.get("f1", &bytes(&f)), Some(f.clone()));
        let mut changed = f.clone();
        changed.state_count += 1;
        assert_eq!(d.get("f1", &bytes(&changed)), None, "other bytes: a miss");
        assert_eq!(d.get("f2", &bytes(&f)), None, "another id: a miss");
    }

    #[test]
    fn take_hands_the_flow_over_only_for_its_bytes() {
        let d = Decoded::default();
        let f = flow("f1", FlowState::Started);
        d.put(&f, bytes(&f));
        let mut changed = f.clone();
        changed.state_count += 1;
        assert_eq!(d.take("f1", &bytes(&changed)), None, "other bytes: a miss");
        assert_eq!(d.len(), 1, "a miss keeps the entry");
        assert_eq!(d.take("f1", &bytes(&f)), Some(f.clone()));
        assert_eq!(d.len(), 0, "handed over, not copied");
        assert_eq!(d.get("f1", &bytes(&f)), None);
    }

    #[test]
    fn final_flows_are_forgotten_and_the_count_is_bounded() {
        let d = Decoded::default();
        let f = flow("f1", FlowState::Started);
        d.put(&f, bytes(&f));
        let mut done = f.clone();
        done.state = FlowState::Terminated;
        d.put(&done, bytes(&done));
        assert_eq!(d.get("f1", &bytes(&f)), None);
        assert_eq!(d.get("f1", &bytes(&done)), None);
        for i in 0..CAPACITY + 10 {
            let f = flow(&format!("f{i}"), FlowState::Started);
            d.put(&f, bytes(&f));
        }
        assert_eq!(d.len(), CAPACITY);
        let last = flow(&format!("f{}", CAPACITY + 9), FlowState::Started);
        assert_eq!(d.get(&last.id, &bytes(&last)), Some(last));
    }
}
