//! Access tokens of the public data endpoint, kept in the state store so every replica can check
//! them and a suspend or terminate revokes them at once (the grant is deleted in the same
//! transaction as the transition).
//!
//! A token is `{flowId}.{secret}`: the flow id finds the flow's grant with one store read, the
//! secret must match it. A pull grant has an access token that expires and a refresh token that
//! does not; a push grant (consumer push) has a single access token valid while the grant exists.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_state::{DeleteRequest, SetRequest, StateError, Store, TxOperation};

use crate::flow::now_ms;

/// Store key prefix of grants.
pub const GRANT_PREFIX: &str = "sluice/transfer/grants/";

/// What a flow's current tokens allow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The flow.
    pub flow_id: String,
    /// The current access token.
    pub access_token: String,
    /// When the access token expires (Unix ms); never if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_ms: Option<u64>,
    /// The refresh token, if refreshable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Missing, malformed, unknown, revoked or expired.
    #[error("{0}")]
    Invalid(&'static str),
    /// The store failed.
    #[error("state store: {0}")]
    Store(#[from] StateError),
}

/// Issues and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn Store>,
    ttl: Duration,
}

fn grant_key(flow_id: &str) -> String {
    format!("{GRANT_PREFIX}{flow_id}")
}

fn secret(flow_id: &str) -> String {
    format!(
        "{flow_id}.{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Tokens {
    /// Tokens in `store`; pull access tokens live `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Tokens { store, ttl }
    }

    /// How long a pull access token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new pull grant (expiring access token and a refresh token) and the write storing it.
    pub fn pull_grant(&self, flow_id: &str) -> Result<(Grant, TxOperation), StateError> {
        let grant = Grant {
            flow_id: flow_id.to_string(),
            access_token: secret(flow_id),
            access_expires_ms: Some(now_ms().saturating_add(self.ttl.as_millis() as u64)),
            refresh_token: Some(secret(flow_id)),
        };
        Ok((grant.clone(), Self::write(&grant)?))
    }

    /// A new push grant (one token valid until revoked) and the write storing it.
    pub fn push_grant(&self, flow_id: &str) -> Result<(Grant, TxOperation), StateError> {
        let grant = Grant {
            flow_id: flow_id.to_string(),
            access_token: secret(flow_id),
            access_expires_ms: None,
            refresh_token: None,
        };
        Ok((grant.clone(), Self::write(&grant)?))
    }

    fn write(grant: &Grant) -> Result<TxOperation, StateError> {
        let value = serde_json::to_vec(grant)
            .map_err(|e| StateError::InvalidRequest(format!("cannot encode a grant: {e}")))?;
        Ok(TxOperation::Upsert(SetRequest::new(
            grant_key(&grant.flow_id),
            Bytes::from(value),
        )))
    }

    /// The write revoking every token of a flow.
    pub fn revoke(flow_id: &str) -> TxOperation {
        TxOperation::Delete(DeleteRequest::new(grant_key(flow_id)))
    }

    async fn grant_of(&self, token: &str) -> Result<Grant, TokenError> {
        let (flow_id, _) = token
            .split_once('.')
            .ok_or(TokenError::Invalid("malformed token"))?;
        let item = self
            .store
            .get(&grant_key(flow_id))
            .await?
            .ok_or(TokenError::Invalid("unknown or revoked token"))?;
        serde_json::from_slice(&item.value)
            .map_err(|_| TokenError::Invalid("unknown or revoked token"))
    }

    /// Checks an access token for `flow_id`; returns the grant.
    pub async fn check(&self, flow_id: &str, token: &str) -> Result<Grant, TokenError> {
        let grant = self.grant_of(token).await?;
        if grant.flow_id != flow_id || !same(&grant.access_token, token) {
            return Err(TokenError::Invalid("unknown or revoked token"));
        }
        if grant.access_expires_ms.is_some_and(|at| now_ms() >= at) {
            return Err(TokenError::Invalid("expired token"));
        }
        Ok(grant)
    }

    /// The OAuth2 `refresh_token` grant: a new access token for a valid refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Grant, TokenError> {
        let mut grant = self.grant_of(refresh_token).await?;
        if !grant
            .refresh_token
            .as_deref()
            .is_some_and(|r| same(r, refresh_token))
        {
            return Err(TokenError::Invalid("unknown or revoked refresh token"));
        }
        grant.access_token = secret(&grant.flow_id);
        grant.access_expires_ms = Some(now_ms().saturating_add(self.ttl.as_millis() as u64));
        // Written only if the grant is still there: a revocation in between wins.
        let item = self
            .store
            .get(&grant_key(&grant.flow_id))
            .await?
            .ok_or(TokenError::Invalid("unknown or revoked refresh token"))?;
        let TxOperation::Upsert(req) = Self::write(&grant)? else {
            return Err(TokenError::Invalid("unknown or revoked refresh token"));
        };
        self.store
            .set(req.with_etag(item.etag))
            .await
            .map_err(|e| match e {
                StateError::EtagMismatch { .. } => {
                    TokenError::Invalid("unknown or revoked refresh token")
                }
                other => TokenError::Store(other),
            })?;
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
