//! Queries over JSON values (Dapr's state query language): a filter, a sort and a page.
//!
//! [`Query::from_json`] reads Dapr's JSON form (`{"filter": {"EQ": {"a.b": 1}}, "sort": [{"key":
//! "a", "order": "DESC"}], "page": {"limit": 10, "token": "..."}}`); [`matches()`] evaluates a
//! filter on one value and [`run`] answers a whole query over a set of items, for backends that
//! have no query engine of their own (memory, redb).
//!
//! Only values that are JSON objects are ever results. A key path such as `person.org` walks
//! nested objects. Numbers compare as numbers and strings as strings (by Unicode code point); a
//! comparison between a number and a string, or with any other kind of value, never matches.

mod eval;
mod parse;

use serde_json::Value;

use crate::store::{Item, Page};

pub use eval::{lookup, matches, run};

/// A condition on a JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// The field equals the value.
    Eq(String, Value),
    /// The field differs from the value (or is absent).
    Neq(String, Value),
    /// The field is greater than the value (numbers compare as numbers, strings as strings).
    Gt(String, Value),
    /// Greater than or equal.
    Gte(String, Value),
    /// Less than.
    Lt(String, Value),
    /// Less than or equal.
    Lte(String, Value),
    /// The field equals one of the values.
    In(String, Vec<Value>),
    /// Every filter matches.
    And(Vec<Filter>),
    /// At least one filter matches.
    Or(Vec<Filter>),
}

/// One sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sort {
    /// The field path.
    pub key: String,
    /// Descending instead of ascending.
    pub descending: bool,
}

/// A whole query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// Which items; `None` selects every item.
    pub filter: Option<Filter>,
    /// Order of the results (then by key, so pages are stable).
    pub sort: Vec<Sort>,
    /// Which page.
    pub page: Page,
}

/// One item a query found.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResult {
    /// The key.
    pub key: String,
    /// The item.
    pub item: Item,
}

/// A page of query results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResponse {
    /// The results, in the query's order.
    pub results: Vec<QueryResult>,
    /// Token for the next page, or `None` if this is the last one.
    pub token: Option<String>,
}

impl Query {
    /// Reads Dapr's JSON form of a query. Every part is optional (`{}` selects every item, first
    /// page); a malformed part is a [`crate::StateError::InvalidRequest`] that names it (such as
    /// `filter.AND[1].GT`). A page limit of 0 means the default page size, as no limit does.
    pub fn from_json(value: &Value) -> Result<Query, crate::StateError> {
        parse::query(value)
    }

    /// The query in Dapr's JSON form, which [`Query::from_json`] reads back as the same query (a
    /// page limit of `Some(0)` reads back as `None`, which means the same).
    pub fn to_json(&self) -> Value {
        parse::to_json(self)
    }
}
