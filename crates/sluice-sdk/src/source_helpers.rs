//! Pull and push helpers for writing sources (see spec/connectors.md).
