//! Consumer pull: an engine source that GETs the provider's endpoint with its bearer token and
//! turns the streamed body into line records positioned by byte offset. On resume it asks for the
//! rest with `Range: bytes=N-` (skipping N bytes itself if the provider ignores ranges). An
//! expired token (401) is refreshed with the OAuth2 `refresh_token` grant when the address
//! carried a refresh token and endpoint.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sluice_sdk::connector::Result;
use sluice_sdk::{
    ConnectorError, Destination, Parameter, ParameterType, Plugin, Position, ReadBatch, Record,
    Settings, Source, Specification,
};

use super::lines::LineSplitter;

/// Name of the internal plugin.
pub const PULL_PLUGIN: &str = "sluice-dps-pull";

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The internal plugin whose source pulls a provider's HTTP endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct PullPlugin;

fn param(desc: &str) -> Parameter {
    Parameter::new(ParameterType::String, desc).default_value("")
}

impl Plugin for PullPlugin {
    fn specification(&self) -> Specification {
        let mut p = BTreeMap::new();
        p.insert(
            "url".to_string(),
            Parameter::new(ParameterType::String, "The provider's endpoint.").required(),
        );
        p.insert("authorization".into(), param("The access token."));
        p.insert("refreshToken".into(), param("The refresh token, if any."));
        p.insert(
            "refreshEndpoint".into(),
            param("Where to refresh the token."),
        );
        Specification {
            name: PULL_PLUGIN.into(),
            summary: "Pulls a provider's HTTP data address (internal).".into(),
            description: "Internal to `sluice serve`: GETs the endpoint of a consumer pull flow."
                .into(),
            version: "v0.1.0".into(),
            author: "Sluice".into(),
            source_params: p,
            destination_params: BTreeMap::new(),
        }
    }

    fn new_source(&self) -> Option<Box<dyn Source>> {
        Some(Box::new(PullSource::default()))
    }

    fn new_destination(&self) -> Option<Box<dyn Destination>> {
        None
    }
}

#[derive(Default)]
struct PullSource {
    url: String,
    token: String,
    refresh_token: String,
    refresh_endpoint: String,
    client: Option<reqwest::Client>,
    stream: Option<ByteStream>,
    splitter: LineSplitter,
    /// Bytes still to drop from the body (the provider ignored our range).
    skip: u64,
    ended: bool,
    last: Option<Position>,
    /// Records split off but not yet handed out (a read returns at most `max`).
    pending: VecDeque<Record>,
}

fn system(message: String, transient: bool) -> ConnectorError {
    ConnectorError::System { message, transient }
}

/// Percent-encodes everything but unreserved characters.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Bearer x` for a bare token; a value with a scheme is sent as is.
pub fn bearer(token: &str) -> String {
    if token.contains(' ') {
        token.to_string()
    } else {
        format!("Bearer {token}")
    }
}

impl PullSource {
    /// Hands out up to `max` pending records; the end of the stream once none are left.
    fn take(&mut self, max: usize) -> ReadBatch {
        let n = max.max(1).min(self.pending.len());
        let records: Vec<Record> = self.pending.drain(..n).collect();
        if let Some(r) = records.last() {
            self.last = Some(r.position.clone());
        }
        ReadBatch {
            records,
            end_of_stream: self.ended && self.pending.is_empty(),
        }
    }

    async fn get(&mut self, from: u64) -> Result<reqwest::Response> {
        let client = self.client.clone().ok_or(ConnectorError::StreamNotOpen)?;
        for attempt in 0..2 {
            let mut req = client.get(&self.url);
            if !self.token.is_empty() {
                req = req.header("authorization", bearer(&self.token));
            }
            if from > 0 {
                req = req.header("range", format!("bytes={from}-"));
            }
            let resp = req
                .send()
                .await
                .map_err(|e| system(format!("pull: GET {}: {e}", self.url), true))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED
                && attempt == 0
                && !self.refresh_token.is_empty()
                && !self.refresh_endpoint.is_empty()
            {
                self.refresh().await?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(system(
                    format!("pull: GET {} answered {}", self.url, resp.status()),
                    resp.status().is_server_error(),
                ));
            }
            return Ok(resp);
        }
        Err(system(
            format!("pull: GET {}: still 401 after a token refresh", self.url),
            false,
        ))
    }

    async fn refresh(&mut self) -> Result<()> {
        let client = self.client.as_ref().ok_or(ConnectorError::StreamNotOpen)?;
        let resp = client
            .post(&self.refresh_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&refresh_token={}",
                form_encode(&self.refresh_token)
            ))
            .send()
            .await
            .map_err(|e| {
                system(
                    format!("pull: refresh at {}: {e}", self.refresh_endpoint),
                    true,
                )
            })?;
        if !resp.status().is_success() {
            return Err(system(
                format!(
                    "pull: refresh at {} answered {}",
                    self.refresh_endpoint,
                    resp.status()
                ),
                false,
            ));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| system(format!("pull: refresh answer is not JSON: {e}"), false))?;
        let token = body
            .get("access_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| system("pull: refresh answer has no access_token".into(), false))?;
        self.token = token.to_string();
        if let Some(r) = body.get("refresh_token").and_then(|v| v.as_str()) {
            self.refresh_token = r.to_string();
        }
        Ok(())
    }
}

#[async_trait]
impl Source for PullSource {
    async fn configure(&mut self, settings: &Settings) -> Result<()> {
        let get = |k: &str| settings.get(k).cloned().unwrap_or_default();
        self.url = get("url");
        self.token = get("authorization");
        self.refresh_token = get("refreshToken");
        self.refresh_endpoint = get("refreshEndpoint");
        Ok(())
    }

    async fn open(&mut self, position: Option<&Position>) -> Result<()> {
        let from = match position {
            None => 0,
            Some(p) => p.to_u64().ok_or_else(|| ConnectorError::InvalidPosition {
                position: p.clone(),
                reason: "not a byte offset".into(),
            })?,
        };
        self.client = Some(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| system(format!("pull: cannot make a client: {e}"), false))?,
        );
        let resp = self.get(from).await?;
        self.skip = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            0
        } else {
            from
        };
        self.splitter = LineSplitter::at(from);
        self.stream = Some(Box::pin(resp.bytes_stream()));
        self.last = position.cloned();
        self.ended = false;
        self.pending.clear();
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<ReadBatch> {
        if !self.pending.is_empty() {
            return Ok(self.take(max));
        }
        if self.ended {
            return Ok(ReadBatch {
                records: Vec::new(),
                end_of_stream: true,
            });
        }
        let stream = self.stream.as_mut().ok_or(ConnectorError::StreamNotOpen)?;
        let mut records = Vec::new();
        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Err(_) => {}
            Ok(None) => {
                self.splitter.finish(&mut records);
                self.ended = true;
            }
            Ok(Some(Err(e))) => {
                return Err(system(format!("pull: reading {}: {e}", self.url), true));
            }
            Ok(Some(Ok(mut chunk))) => {
                if self.skip > 0 {
                    let drop = self.skip.min(chunk.len() as u64) as usize;
                    self.skip -= drop as u64;
                    chunk = chunk.slice(drop..);
                }
                self.splitter.push(chunk, &mut records);
            }
        }
        self.pending.extend(records);
        Ok(self.take(max))
    }

    async fn ack(&mut self, _positions: &[Position]) -> Result<()> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<Option<Position>> {
        self.stream = None;
        Ok(self.last.clone())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.stream = None;
        self.client = None;
        Ok(())
    }
}
