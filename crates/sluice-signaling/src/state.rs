//! Data flow states and the transition table of the Data Plane Signaling specification.

use serde::{Deserialize, Serialize};

/// The state of a data flow, as the JSON strings of the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowState {
    /// Created, nothing done yet.
    Initialized,
    /// Preparing asynchronously.
    Preparing,
    /// Ready to receive (consumer) or to start.
    Prepared,
    /// Starting asynchronously.
    Starting,
    /// Data is moving or can be fetched.
    Started,
    /// Paused; can resume.
    Suspended,
    /// Finished successfully. Final.
    Completed,
    /// Ended on request or by an error. Final.
    Terminated,
}

impl FlowState {
    /// Every state, in lifecycle order.
    pub const ALL: [FlowState; 8] = [
        FlowState::Initialized,
        FlowState::Preparing,
        FlowState::Prepared,
        FlowState::Starting,
        FlowState::Started,
        FlowState::Suspended,
        FlowState::Completed,
        FlowState::Terminated,
    ];

    /// True for COMPLETED and TERMINATED: nothing leaves them. Sluice follows the specification
    /// here: the Go SDK lets COMPLETED go to TERMINATED, Sluice refuses it as an illegal transition.
    pub fn is_final(self) -> bool {
        matches!(self, FlowState::Completed | FlowState::Terminated)
    }

    /// The specification's string.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Initialized => "INITIALIZED",
            FlowState::Preparing => "PREPARING",
            FlowState::Prepared => "PREPARED",
            FlowState::Starting => "STARTING",
            FlowState::Started => "STARTED",
            FlowState::Suspended => "SUSPENDED",
            FlowState::Completed => "COMPLETED",
            FlowState::Terminated => "TERMINATED",
        }
    }
}

impl std::fmt::Display for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What moving a flow to a state would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// A real transition: set the state and its timestamp, increment the counter.
    Apply,
    /// Already there: change nothing.
    Same,
    /// Not allowed from the current state.
    Illegal,
}

/// Decides a move from `from` (`None` for a flow that does not exist yet) to `to`.
pub fn check(from: Option<FlowState>, to: FlowState) -> Move {
    use FlowState::*;
    if from == Some(to) {
        return Move::Same;
    }
    let allowed = match to {
        Initialized => false,
        Preparing => from.is_none(),
        Prepared => matches!(from, None | Some(Preparing)),
        Starting => matches!(from, None | Some(Prepared)),
        Started => matches!(from, None | Some(Prepared | Starting | Suspended)),
        Suspended => from == Some(Started),
        Completed => from == Some(Started),
        Terminated => from.is_some_and(|f| !f.is_final()),
    };
    if allowed {
        Move::Apply
    } else {
        Move::Illegal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FlowState::*;

    /// The specification's table, written out: (to, allowed from; `None` = a new flow).
    fn table() -> Vec<(FlowState, Vec<Option<FlowState>>)> {
        vec![
            (Preparing, vec![None]),
            (Prepared, vec![None, Some(Preparing)]),
            (Starting, vec![None, Some(Prepared)]),
            (
                Started,
                vec![None, Some(Prepared), Some(Starting), Some(Suspended)],
            ),
            (Suspended, vec![Some(Started)]),
            (Completed, vec![Some(Started)]),
            (
                Terminated,
                vec![
                    Some(Initialized),
                    Some(Preparing),
                    Some(Prepared),
                    Some(Starting),
                    Some(Started),
                    Some(Suspended),
                ],
            ),
        ]
    }

    #[test]
    fn every_pair_of_states_follows_the_table() {
        let froms: Vec<Option<FlowState>> = std::iter::once(None)
            .chain(ALL_STATES.iter().copied().map(Some))
            .collect();
        for (to, allowed) in table() {
            for from in &froms {
                let expected = if *from == Some(to) {
                    Move::Same
                } else if allowed.contains(from) {
                    Move::Apply
                } else {
                    Move::Illegal
                };
                assert_eq!(check(*from, to), expected, "{from:?} -> {to}");
            }
        }
    }

    const ALL_STATES: [FlowState; 8] = FlowState::ALL;

    #[test]
    fn final_states_are_left_by_nothing() {
        for from in [Completed, Terminated] {
            for to in FlowState::ALL {
                let m = check(Some(from), to);
                assert!(m != Move::Apply, "{from} -> {to} must not apply");
            }
        }
    }

    #[test]
    fn states_serialise_as_upper_case_strings() {
        for s in FlowState::ALL {
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            let back: FlowState = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, s);
        }
    }
}
