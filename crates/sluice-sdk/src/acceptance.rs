//! The acceptance kit every connector passes.
