//! Queries over JSON values (Dapr's state query language): a filter, a sort and a page.
//!
//! Values that are not JSON objects never match a filter. A key path such as `person.org` walks
//! nested objects.

use serde_json::Value;

use crate::store::{Item, Page};

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
